"""pneumo's Hydra configs, shipped inside the package as ``pneumo.conf`` (read as ``pkg://pneumo.conf``)."""
