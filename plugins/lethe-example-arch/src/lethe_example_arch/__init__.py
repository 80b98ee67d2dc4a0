"""An example Lethe architecture plugin (see the ``lethe.architectures`` entry point)."""
