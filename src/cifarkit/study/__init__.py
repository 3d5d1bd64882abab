"""Many runs: `cifarkit sweep` (seeds, a grid or an Optuna search, run by several workers, resumable, in a study that
several machines can share) and `cifarkit compare` (runs grouped by config, with n, mean, spread, a 95% t-interval
and Welch's test against a baseline).

optuna and scipy are imported by the modules that need them, inside the functions that run these two commands:
`cifarkit train` never loads them.
"""
