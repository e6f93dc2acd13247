import pytest

from qsal.errors import QsalError
from qsal.study.config import parse_run_config

STUDY = {"name": "sgt", "datasets": ["breastmnist"], "models": ["small_cnn"], "methods": ["fp32", "sgt"], "seeds": [0]}


def test_sgt_target_defaults_to_the_authors_log_softmax_and_is_validated():
    assert parse_run_config(STUDY, "s.yaml").sgt.target == "log_softmax"
    assert parse_run_config({**STUDY, "sgt": {"target": "logit"}}, "s.yaml").sgt.target == "logit"
    with pytest.raises(QsalError, match="sgt.target: must be log_softmax or logit"):
        parse_run_config({**STUDY, "sgt": {"target": "softmax"}}, "s.yaml")
