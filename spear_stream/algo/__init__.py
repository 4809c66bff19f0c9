"""Pure algorithm code: rewards, advantages, Dr.BoT filters, losses, SIL math and the curriculum.

Everything here is a function of tensors (plus the config dataclasses for typing): no I/O, no
torch.distributed. Formulas and defaults follow ``docs/algorithm.md``.
"""
