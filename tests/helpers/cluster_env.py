"""Launcher environments for runtime.cluster / runtime.distribute tests."""

import json


def tf_config(cluster, task_type="worker", index=0):
    """The environment of task `index` of job `task_type` in `cluster` (a TF_CONFIG dict)."""
    return {
        "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": task_type, "index": index}})
    }
