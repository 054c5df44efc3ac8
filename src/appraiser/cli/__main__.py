"""`python -m appraiser.cli`: the `appraiser` command, for launchers that start a module
(`accelerate launch -m appraiser.cli train ...`, `torchrun -m appraiser.cli train ...`)."""

from appraiser.cli import main

if __name__ == "__main__":
    main()
