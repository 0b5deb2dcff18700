"""GraphQL endpoint (placeholder until the GraphQL API lands)."""

from fastapi import FastAPI


def mount_graphql(app: FastAPI) -> None:
    return None
