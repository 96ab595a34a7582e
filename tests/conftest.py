from pathlib import Path

import pytest

DATA_DIR = Path(__file__).parent / "data"
GOLDEN_DIR = DATA_DIR / "golden" / "codeformer"


@pytest.fixture(scope="session")
def synthetic_state_dict():
    """Synthetic CodeFormer weights (golden README rule, BASE_SEED=1). Shared: making them takes seconds."""
    from codeformer_core.weights import synthetic_codeformer_state_dict

    return synthetic_codeformer_state_dict(seed=1)


@pytest.fixture(scope="session")
def synthetic_model(synthetic_state_dict):
    from codeformer_core.weights import build_codeformer

    return build_codeformer(synthetic_state_dict)
