-- Camera source policy (maskwatch.netpolicy): a camera may fetch from loopback/private/link-local
-- addresses only when registered with allow_private_network = true. Existing rows read as false.
ALTER TABLE cameras ADD COLUMN IF NOT EXISTS allow_private_network Bool DEFAULT false AFTER rules;
