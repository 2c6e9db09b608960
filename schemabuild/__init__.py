"""schemabuild: a Pydantic schema plus a few examples in, a small fine-tuned JSON model out."""

__version__ = "0.1.0"

from schemabuild.task import Example, FieldEval, Task, TaskError  # noqa: E402

__all__ = ["Example", "FieldEval", "Task", "TaskError", "Client", "__version__"]


def __getattr__(name):  # keep `import schemabuild` light: the client pulls in httpx only when used
    if name == "Client":
        from schemabuild.client import Client

        return Client
    raise AttributeError(name)
