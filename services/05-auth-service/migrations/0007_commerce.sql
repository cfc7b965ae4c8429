-- auth-service: permissions of the commerce services (issue 6). The service role gets what the
-- checkout saga (16) and the cart (19) call: coupon validation and reservations at 22, payments
-- on a user's behalf and refunds at 15, inventory reads at 18. Administrators manage coupons
-- (22), tax rates (21) and read payments (15) and inventory (18); managers coupons and stock.
INSERT INTO permissions (role_name, permission) VALUES
    ('service', 'coupons:read'), ('service', 'coupon-redemptions:write'),
    ('service', 'payments:write'), ('service', 'payments:read'), ('service', 'inventory:read'),
    ('admin', 'coupons:write'), ('admin', 'coupons:read'), ('admin', 'tax_rates:write'),
    ('admin', 'payments:read'), ('admin', 'payments:write'), ('admin', 'inventory:read'),
    ('manager', 'coupons:write'), ('manager', 'coupons:read'), ('manager', 'inventory:read');
