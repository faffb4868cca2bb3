"""Wearables and their radio link: GATT codecs, the BLE link model, the emulated sensors."""
