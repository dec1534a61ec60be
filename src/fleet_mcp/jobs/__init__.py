"""Scheduler jobs that sit above the services: they may call tools through the one gate (`app.gate`).

Service packages (`gitops`, `federation`, `vault`) never import the gate or the tool registry; a
background job that must act like a client (auto-sync, auto-apply) lives here, and the scheduler
imports these modules when `serve` starts (`fleet_mcp.scheduler.run_scheduler`).
"""
