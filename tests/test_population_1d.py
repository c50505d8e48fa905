"""Population training of the 1-D architectures (zoo.population_1d) on MNIST-1D: a population of one
matches the plain loop, members do not interact, and extracted members compute the population's logits."""
from __future__ import annotations

import pytest

from fixtures import population as shared
from zoo.population import POPULATIONS, Member, Population
from zoo.sampling import TrainConfig

pytestmark = pytest.mark.usefixtures("torch_one_thread")

CONFIGS = {"cnn1d": {"channels": 6, "n_layers": 3, "kernel_size": 5, "activation": "tanh"}}


@pytest.fixture(scope="module")
def mnist1d():
    """MNIST-1D splits with 256 training examples."""
    return shared.first_train_examples("mnist1d", 256)


def arch_config(arch: str, splits) -> dict:
    return shared.arch_config(CONFIGS, arch, splits)


def test_every_sequence_population_arch_has_a_config_here():
    # test_population.py leaves the "*1d" entries to this file
    assert set(CONFIGS) == {a for a in POPULATIONS.names() if a.endswith("1d") and not a.startswith("wild")}


@pytest.mark.parametrize("arch", sorted(CONFIGS))
@pytest.mark.parametrize("optimizer", ["sgd", "adam", "rmsprop"])
def test_population_of_one_matches_the_plain_loop(mnist1d, arch, optimizer):
    shared.assert_population_of_one_matches_the_plain_loop(arch, arch_config(arch, mnist1d), mnist1d, optimizer)


@pytest.mark.parametrize("arch", sorted(CONFIGS))
def test_members_do_not_interact(mnist1d, arch):
    shared.assert_members_do_not_interact(arch, arch_config(arch, mnist1d), mnist1d)


@pytest.mark.parametrize("arch", sorted(CONFIGS))
def test_extracted_members_compute_the_population_logits(mnist1d, arch):
    cfg = arch_config(arch, mnist1d)
    members = [Member(TrainConfig(optimizer=o, epochs=1, checkpoints=(1,)), s)
               for s, o in enumerate(("sgd", "adam", "rmsprop"))]
    shared.assert_extracted_members_compute_the_population_logits(Population(arch, cfg, members), mnist1d)
