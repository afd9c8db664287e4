"""Devices: target profiles, the emulated aarch64 environments and the on-device validator, host
runtimes and .tflite inspection."""
