"""The training loop (loop.py), device and seeding (device.py), and the recipe glue (run.py)."""
