"""The tasks: lm, mt, graph, images; each one registered object (see :mod:`.base`)."""

from .graph import GRAPH
from .images import IMAGES
from .lm import LM
from .mt import MT
from .registry import available_tasks, get_task, register_task

for _task in (LM, MT, GRAPH, IMAGES):
    register_task(_task)

__all__ = ["GRAPH", "IMAGES", "LM", "MT", "available_tasks", "get_task", "register_task"]
