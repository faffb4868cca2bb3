"""IPFS content addressing: CIDs (``cid``) and a UnixFS importer/exporter (``unixfs``)."""
