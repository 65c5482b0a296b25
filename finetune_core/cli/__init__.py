"""The command line: ``python -m finetune_core <command>``."""
