"""Training: the loop (loop.py), every flag of a run (config.py), the one run of every task
(finetune.py) and the tasks it builds (tasks/); what a loss is a mean over (objective.py), mixed
precision (precision.py), several processes (distributed.py), the device and the seeds (device.py),
resumable checkpoints (state.py)."""
