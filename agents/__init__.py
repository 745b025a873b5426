"""Meta-RL agents (MAML-RL, Reptile-RL, RL², baselines), one readable file each."""
