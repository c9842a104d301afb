from torchslim.cli import entry

entry()
