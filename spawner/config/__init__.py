"""What admins write in YAML, read with clear errors: profiles and quotas, and how a problem in any
YAML file (profiles, a static GPU inventory) names its file, line and field.

It sits below the hub's spawner and the service, which both load the same profiles and quotas,
and below the inventory, which reports its YAML problems the same way.
"""
