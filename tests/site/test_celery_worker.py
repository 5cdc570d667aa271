from infrasim_site.tasks import ping


def test_worker_answers_a_task_sent_through_the_redis_broker(worker):
    result = ping.delay("hello")
    assert result.get(timeout=20) == {"echo": "hello", "worker_host": result.get()["worker_host"]}
    assert result.get()["echo"] == "hello"
