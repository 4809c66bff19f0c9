"""Read-only inspection of run directories, live or finished (docs/design.md section 7).

Nothing here imports torch or transformers at module level: the replay storages are read as numpy memmaps via
their JSON sidecars, and a tokenizer is loaded (from ``tokenizer.json`` with the ``tokenizers`` library when
possible) only when rows are decoded. Modules:

* :mod:`~spear_stream.inspect.rundir`: locate and validate a run directory; config, metrics, versions.
* :mod:`~spear_stream.inspect.storage`: numpy view of an on-disk tensordict memmap storage.
* :mod:`~spear_stream.inspect.buffers`: consistent snapshots of the fresh and SIL buffers as row tables.
* :mod:`~spear_stream.inspect.stats`: text histograms and summaries.
* :mod:`~spear_stream.inspect.rowfilter`: safe ``--filter`` expressions over row fields.
* :mod:`~spear_stream.inspect.decode`: token ids to text, with loss-masked spans marked.
* :mod:`~spear_stream.inspect.follow`: the live summary of ``spear-replay follow``.
* :mod:`~spear_stream.inspect.charts`: PNG charts of one or several runs' metrics.
* :mod:`~spear_stream.inspect.compare_report`: the table and curves of ``tools/compare_recipes.py``.
"""

from __future__ import annotations


class InspectError(Exception):
    """A problem the user can understand and fix (missing or half-written run directory, bad arguments)."""
