"""Hydra instantiates launchers only from the `hydra_plugins` namespace; the code is repshift.launchers."""
from repshift.launchers import SlurmLauncher as _SlurmLauncher


class SlurmLauncher(_SlurmLauncher):
    """`hydra/launcher=slurm` (repshift/configs/hydra/launcher/slurm.yaml); see repshift.launchers."""
