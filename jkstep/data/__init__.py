"""Reference trajectories: the on-disk store, xTB generation, same-energy replicas and k-step windows."""
