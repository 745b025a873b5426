"""Learning maths below sampling: policies, functional parameters and adaptation, returns
and GAE, the TRPO solver."""
