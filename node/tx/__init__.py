"""The two transaction families (access, data): build, sign, stateless validation."""

from node.tx.model import (
    BREAK_GLASS_REASONS,
    DATA_TYPES,
    KIND_GRANT,
    KIND_NAMES,
    KIND_POLICY,
    KIND_PROFILE,
    KIND_READ,
    KIND_RELEASE,
    KIND_WRITE,
    Credential,
    Grant,
    Policy,
    Profile,
    Read,
    Release,
    SealedKey,
    Tx,
    TxError,
    Write,
    data_type_id,
    data_type_name,
)

__all__ = [
    "BREAK_GLASS_REASONS", "DATA_TYPES", "KIND_GRANT", "KIND_NAMES", "KIND_POLICY", "KIND_PROFILE",
    "KIND_READ", "KIND_RELEASE", "KIND_WRITE", "Credential", "Grant", "Policy", "Profile", "Read", "Release", "SealedKey", "Tx", "TxError", "Write", "data_type_id", "data_type_name",
]
