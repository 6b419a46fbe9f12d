"""The domain model: events, people, the facts decisions read and the actions they return. Pure."""
