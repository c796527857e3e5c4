"""The search for a knowledge-critical subnetwork: ``discover(model, target, control_kg, control_lm, config)``.

One idea per module, in the order a search uses them: ``config`` (the settings),
``prepare`` (inputs to data, cached passes), ``teacher`` (how the original
model's outputs are kept), ``terms`` and ``losses`` (the objective and one step's
losses), ``selection`` (which checkpoint is the result), ``checkpoints`` (the
file to resume from), ``search`` (the working state and its step), ``loop``
(``discover``) and ``result`` (``Discovery``).
"""

from kcs_tl.discovery.config import DiscoveryConfig
from kcs_tl.discovery.loop import discover
from kcs_tl.discovery.result import Discovery
from kcs_tl.discovery.search import Search

__all__ = ["Discovery", "DiscoveryConfig", "Search", "discover"]
