-- V13: close V12's upgrade window for the mail sender's feed position.
--
-- V12 left consumers made before it without a role, to be claimed by the
-- first role that starts them again. For the mail sender's consumer
-- (`mailer`, src/mail/outbound.rs) that left a window between the upgrade
-- and the sender's next start in which any writer could claim it and move
-- it past replies. It belongs to the mail roles (ld_mail_feed_start gives
-- it to livedesk_mailer anyway), so it is given to them here, at once.
UPDATE feed_consumers SET owner_role = 'livedesk_mailer'
WHERE name = 'mailer' AND owner_role IS NULL
  AND EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'livedesk_mailer');
