"""``python -m spawner.service``: how the hub starts the managed service."""

from . import lifetime

# First of all, before the slow imports below: the service must stop when the hub that started it
# dies, and a hub dying before the service asks to be told goes unnoticed (see .lifetime).
lifetime.follow_the_hub()

from .app import main  # noqa: E402 - after the hub is followed, on purpose

if __name__ == "__main__":
    main()
