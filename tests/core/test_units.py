import pytest

from spawner.core.units import GPU, Node, SliceRequest, SliceRequestError, describe_milli


def a100(index=0, node="n1"):
    return GPU(uuid=f"GPU-{node}-{index}", node=node, index=index, model="A100-80GB", memory_mib=81920)


def test_memory_follows_the_fraction_unless_given():
    eighth = SliceRequest.fraction(1, 8)
    assert eighth.milli_gpu == 125
    assert eighth.gpu_memory_on(a100()) == 10240
    assert SliceRequest(milli_gpu=125, gpu_memory_mib=4096).gpu_memory_on(a100()) == 4096
    assert SliceRequest(gpus=2).gpu_memory_on(a100()) == 81920


def test_a_whole_gpu_asked_as_a_fraction_is_one_gpu():
    assert SliceRequest(milli_gpu=1000) == SliceRequest(gpus=1)
    assert SliceRequest(milli_gpu=1000).total_milli == 1000


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(milli_gpu=1001), "between 1 and 1000"),
        (dict(milli_gpu=-5), "between 1 and 1000"),
        (dict(gpus=-1), "0 or more"),
        (dict(milli_gpu=500, gpus=2), "not both"),
        (dict(gpu_memory_mib=100), "needs milli_gpu or gpus"),
        (dict(milli_gpu=100, gpu_memory_mib=0), "> 0"),
    ],
)
def test_malformed_requests_say_what_is_wrong(kwargs, message):
    with pytest.raises(SliceRequestError, match=message):
        SliceRequest(**kwargs)


def test_requests_describe_themselves_as_people_say_them():
    assert SliceRequest.fraction(1, 8).describe() == "1/8 GPU"
    assert SliceRequest(milli_gpu=320).describe() == "0.32 GPU"
    assert SliceRequest(gpus=2, gpu_models=frozenset({"A100"})).describe() == "2 GPUs (A100)"
    assert SliceRequest().describe() == "CPU only"
    assert describe_milli(500) == "1/2"


def test_request_allows_only_its_models_and_pool():
    gpu = a100()
    assert SliceRequest(gpus=1).allows(gpu)
    assert not SliceRequest(gpus=1, gpu_models=frozenset({"T4"})).allows(gpu)
    assert not SliceRequest(gpus=1, pool="train").allows(gpu)


def test_node_rejects_gpus_of_another_node_and_duplicate_indices():
    with pytest.raises(ValueError, match="listed on"):
        Node(name="n2", cpu_milli=1, memory_mib=1, gpus=(a100(node="n1"),))
    with pytest.raises(ValueError, match="share an index"):
        Node(name="n1", cpu_milli=1, memory_mib=1, gpus=(a100(0), GPU("x", "n1", 0, "A100-80GB", 1)))
