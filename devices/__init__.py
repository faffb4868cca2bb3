"""Emulated wearables, the patient phone gateway, the staff client and load generators."""
