"""interceptd-runc: the hardened drop-in for runc/crun (rewrites bundles, then hands over)."""
