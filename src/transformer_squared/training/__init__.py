"""The REINFORCE trainer (paper §3.1), one job per module.

`train` (config, the run's setup/train/save/cleanup loop), `rollout` (objectives: exact MCQ
policy gradient, sampled letters, generated rollouts, KL), `splits` (seeded train / validation /
holdout parts), `checkpoint` (atomic best/ and latest/ folders, resume state), `sinks` (metrics).
Importing the package loads nothing heavy; import the module you need.
"""
