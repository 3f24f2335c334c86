"""The worker side of executors that run units in other processes or on other machines.

A worker gets a :class:`~fundbench.runs.executors.UnitTicket` and redoes the driver's
planning of that one unit (:func:`fundbench.runs.engine.worker_pair`), so a result computed
on a worker is the result the driver would have computed. Two shapes of work:

* :func:`extract` then :func:`fit`, for executors where the driver owns the records (Ray):
  extraction runs where the GPU is and returns the embeddings and class text embeddings;
  fitting the cells needs only those and returns the records, which the driver writes;
* :func:`run_here`, for batch jobs that should survive their driver (a Slurm array): the
  whole unit, its records written into the shared results folder as ``--shard`` does.

A worker process keeps its last planned pairs (and their built models), so the extraction
and the fit of one unit, or several units of one model, do not rebuild the model.
"""

from __future__ import annotations

import hashlib
import pickle
from collections import OrderedDict

from fundbench.host.loading import get_host
from fundbench.runs.executors import Extracted, UnitResult, UnitTicket

_KEEP = 2
_pairs: OrderedDict = OrderedDict()


def _pair(ticket: UnitTicket):
    from fundbench.runs.engine import worker_pair

    key = hashlib.sha256(pickle.dumps(ticket)).hexdigest()
    if key not in _pairs:
        _pairs[key] = worker_pair(ticket, get_host())
        while len(_pairs) > _KEEP:
            _pairs.popitem(last=False)
    _pairs.move_to_end(key)
    return _pairs[key]


def extract(ticket: UnitTicket) -> Extracted:
    """The unit's embeddings (written to this worker's feature cache as well, which on a
    shared filesystem is the driver's) and its class text embeddings, when a pending cell
    reads them."""
    pair, store = _pair(ticket)
    x = key = text = None
    if pair.needs_features:
        x = pair.embeddings(ticket.config, store)
        key = store.key(pair.run.model)
    if pair.needs_text:
        text = pair.text_embeddings()
    stats = {k: v for k, v in vars(pair.stats).items() if isinstance(v, int | float)}
    return Extracted(key, x, text, stats)


def fit(ticket: UnitTicket, extracted: Extracted | None) -> list[dict]:
    """The records of the unit's pending cells, computed from ``extracted`` (nothing is
    extracted or built here when it carries what the cells read)."""
    pair, _ = _pair(ticket)
    if extracted is not None:
        pair.provide(extracted.x, extracted.text_weights)
    return list(pair.records())


def run_here(ticket: UnitTicket) -> UnitResult:
    """The whole unit in this process, its records and unit summary written to the run's
    results folder (shared with the driver)."""
    from fundbench.runs.engine import RunSummary
    from fundbench.runs.summary import write_unit

    pair, _ = _pair(ticket)
    summary = RunSummary(out=ticket.config.out)
    cells_s = pair.compute(ticket.config, summary)
    stats = pair.stats.as_dict() if pair.stats.images or pair.stats.cached else {}
    result = UnitResult(
        ticket.unit,
        pair.run.entry.name,
        pair.dataset.id,
        pair.run.facts.variant,
        summary.computed,
        summary.reused,
        summary.not_applicable,
        stats,
        round(cells_s, 4),
        invalid=summary.invalid,
    )
    write_unit(ticket.config.out, result.as_dict())
    return result
