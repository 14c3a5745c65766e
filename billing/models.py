# Prices, budgets, quotas and the usage ledger arrive with the cost-governance issue.
