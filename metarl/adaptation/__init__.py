"""Adaptation by policy-gradient steps on sampled episodes (the inner step MAML-TRPO and
Reptile-RL train and evaluate with), the meta-trainer those two agents share, and the
structured curvature products of MAML-TRPO's outer step (``curvature``)."""
