"""Examples of using clusterbus from applications."""
