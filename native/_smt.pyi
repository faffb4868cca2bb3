"""Types of native/_smt.pyx (one block's update of the state tree)."""

from collections.abc import Callable

def update(get: Callable[[bytes], bytes | None], writes: dict[bytes, bytes]) -> tuple[bytes, dict[bytes, bytes]]: ...
