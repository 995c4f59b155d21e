"""Monetization: billable usage per subscription (export), an incremental usage publisher
with a durable watermark and idempotent ledger (publisher), and billed-versus-stored
reconciliation (reconcile). See docs/wso2-analytics.md section 5 (WSO2 monetization usage publishing)."""
