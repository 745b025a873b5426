"""Adaptation by policy-gradient steps on sampled episodes (the inner step MAML-TRPO and
Reptile-RL train and evaluate with) and the meta-trainer those two agents share."""
