"""Model files: where they come from, where they are cached, how they are made loadable."""
