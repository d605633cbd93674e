"""TorchServe serving: the handler, the archive builder, the launcher (start / ready / stop),
batch splitting across idle cores, and TorchServe's config files (`config/`, package data)."""
