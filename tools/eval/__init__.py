"""dn2-eval: the paper's evaluation protocols, offline."""
