"""From a spec and a key list to a checked plan: params, matching, checks, planning, fitting."""
