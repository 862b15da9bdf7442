"""Train pix2pix: `python train.py --epochs 5 --batch-size 8 --dataset-root ./data --device cuda`.

The seed's entry point; identical to `tinypix2pix train ...`. `python train.py --help` lists
every option. Multi-GPU: `torchrun --standalone --nproc_per_node=N train.py ...` (see README).
"""
from tinypix2pix.cli import train_main

if __name__ == "__main__":
    train_main()
