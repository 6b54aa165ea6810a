"""The Prefect skin around the domain (`mattermost_connector`): the CLI, and the top-level
folders `flows/`, `tasks/` and `deployments/`, installed as `mattermost_prefect.flows`,
`mattermost_prefect.tasks` and `mattermost_prefect.deployments` (pyproject.toml's package-dir)
so that no generic top-level name (`tasks`, `flows`) is claimed in a shared environment."""
