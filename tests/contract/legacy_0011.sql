
SET statement_timeout = 0;
SET lock_timeout = 0;
SET idle_in_transaction_session_timeout = 0;
SET client_encoding = 'UTF8';
SET standard_conforming_strings = on;
SELECT pg_catalog.set_config('search_path', '', false);
SET check_function_bodies = false;
SET xmloption = content;
SET client_min_messages = warning;
SET row_security = off;

CREATE FUNCTION public.audit_log_is_append_only() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
            BEGIN
              RAISE EXCEPTION 'the audit log is append-only' USING ERRCODE = 'check_violation';
            END $$;

CREATE FUNCTION public.idempotency_claim(p_scope character varying, p_owner character varying, p_key character varying, p_request_hash character varying, p_created_at timestamp with time zone, p_status integer DEFAULT '-1'::integer, p_response text DEFAULT ''::text) RETURNS TABLE(request_hash character varying, status_code integer, response text)
    LANGUAGE plpgsql
    AS $$
BEGIN
    IF NOT pg_try_advisory_xact_lock(
        hashtextextended(p_scope || ' ' || p_owner || ' ' || p_key, 0)
    ) THEN
        RAISE EXCEPTION 'Idempotency-Key % is being claimed by a request still running', p_key
            USING ERRCODE = 'CX009';
    END IF;
    INSERT INTO idempotency_keys AS k
        (scope, owner, key, request_hash, status_code, response, created_at)
    VALUES (p_scope, p_owner, p_key, p_request_hash, p_status, p_response, p_created_at)
    ON CONFLICT DO NOTHING;
    IF FOUND THEN
        RETURN;
    END IF;
    RETURN QUERY
    SELECT k.request_hash, k.status_code, k.response FROM idempotency_keys AS k
    WHERE k.scope = p_scope AND k.owner = p_owner AND k.key = p_key;
END
$$;

CREATE FUNCTION public.idempotency_save(p_scope character varying, p_owner character varying, p_key character varying, p_status integer, p_response text) RETURNS void
    LANGUAGE sql
    AS $$
    UPDATE idempotency_keys SET status_code = p_status, response = p_response
    WHERE scope = p_scope AND owner = p_owner AND key = p_key
$$;

CREATE FUNCTION public.ledger_capture(p_hold_id uuid, p_fee bigint, p_fee_currency character varying, p_suspense uuid, p_revenue uuid, p_journal_id uuid, p_created_at timestamp with time zone, p_settled_at timestamp with time zone) RETURNS TABLE(amount bigint, status character varying, reference character varying, id uuid, kind character varying, currency character varying, user_id uuid)
    LANGUAGE plpgsql
    AS $$
DECLARE
    held record;
BEGIN
    UPDATE wallet_holds AS h
    SET status = 'CAPTURED', settled_at = p_settled_at, journal_id = p_journal_id
    FROM wallet_accounts AS a
    WHERE h.id = p_hold_id AND h.status = 'HELD' AND a.id = h.account_id
        AND a.currency = p_fee_currency AND p_fee >= 0 AND p_fee < h.amount
    RETURNING h.amount, h.reference, a.id, a.kind, a.currency, a.user_id INTO held;
    IF NOT FOUND THEN
        SELECT h.amount, h.status, h.reference, a.id, a.kind, a.currency, a.user_id INTO held
        FROM wallet_holds AS h JOIN wallet_accounts AS a ON a.id = h.account_id
        WHERE h.id = p_hold_id;
        IF NOT FOUND THEN
            RETURN;
        END IF;
        IF held.status = 'HELD' THEN
            RAISE EXCEPTION 'fee % % does not fit in hold % of % %',
                p_fee, p_fee_currency, p_hold_id, held.amount, held.currency
                USING ERRCODE = 'CX002';
        END IF;
        RETURN QUERY
        SELECT held.amount, held.status, held.reference, held.id, held.kind, held.currency,
            held.user_id;
        RETURN;
    END IF;
    UPDATE wallet_accounts AS a SET locked_balance = a.locked_balance - held.amount
    WHERE a.id = held.id;
    -- Cannot go short: the wallet gives exactly what was just unlocked.
    PERFORM ledger_post(
        p_journal_id => p_journal_id,
        p_kind => 'CAPTURE',
        p_user_id => held.user_id,
        p_quote_id => NULL,
        p_reference => held.reference,
        p_details => NULL,
        p_created_at => p_created_at,
        p_entry_accounts => CASE WHEN p_fee > 0 THEN ARRAY[held.id, p_suspense, p_revenue]
                                 ELSE ARRAY[held.id, p_suspense] END,
        p_entry_currencies => array_fill(
            held.currency::varchar, ARRAY[CASE WHEN p_fee > 0 THEN 3 ELSE 2 END]
        ),
        p_entry_amounts => CASE WHEN p_fee > 0 THEN ARRAY[-held.amount, held.amount - p_fee, p_fee]
                                ELSE ARRAY[-held.amount, held.amount] END,
        p_wallets => ARRAY[held.id],
        p_wallet_moves => ARRAY[-held.amount],
        p_wallet_limits => ARRAY[NULL::bigint]
    );
    RETURN QUERY
    SELECT held.amount, 'CAPTURED'::varchar, held.reference, held.id, held.kind, held.currency,
        held.user_id;
END
$$;

CREATE FUNCTION public.ledger_hold(p_hold_id uuid, p_account_id uuid, p_amount bigint, p_reference character varying, p_created_at timestamp with time zone) RETURNS boolean
    LANGUAGE plpgsql
    AS $$
BEGIN
    INSERT INTO wallet_holds (id, account_id, amount, status, reference, created_at)
    VALUES (p_hold_id, p_account_id, p_amount, 'HELD', p_reference, p_created_at)
    ON CONFLICT (id) DO NOTHING;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    UPDATE wallet_accounts SET locked_balance = locked_balance + p_amount
    WHERE id = p_account_id AND balance - locked_balance >= p_amount;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'insufficient funds in wallet %', p_account_id USING ERRCODE = 'CX001';
    END IF;
    RETURN true;
END
$$;

CREATE FUNCTION public.ledger_post(p_journal_id uuid, p_kind character varying, p_user_id uuid, p_quote_id character varying, p_reference character varying, p_details text, p_created_at timestamp with time zone, p_entry_accounts uuid[], p_entry_currencies character varying[], p_entry_amounts bigint[], p_wallets uuid[], p_wallet_moves bigint[], p_wallet_limits bigint[]) RETURNS void
    LANGUAGE plpgsql
    AS $$
BEGIN
    INSERT INTO wallet_journals (id, kind, user_id, quote_id, reference, details, created_at)
    VALUES (p_journal_id, p_kind, p_user_id, p_quote_id, p_reference, p_details, p_created_at);
    INSERT INTO wallet_entries (journal_id, account_id, currency, amount, created_at)
    SELECT p_journal_id, e.account_id, e.currency, e.amount, p_created_at
    FROM unnest(p_entry_accounts, p_entry_currencies, p_entry_amounts)
        WITH ORDINALITY AS e(account_id, currency, amount, n)
    ORDER BY e.n;
    FOR i IN 1 .. coalesce(array_length(p_wallets, 1), 0) LOOP
        UPDATE wallet_accounts
        SET balance = balance + p_wallet_moves[i]
        WHERE id = p_wallets[i]
            AND (p_wallet_moves[i] >= 0 OR balance - locked_balance >= -p_wallet_moves[i])
            AND (p_wallet_moves[i] <= 0 OR p_wallet_moves[i] <= p_wallet_limits[i] - balance);
        IF NOT FOUND THEN
            IF p_wallet_moves[i] < 0 THEN
                RAISE EXCEPTION 'insufficient funds in wallet %', p_wallets[i]
                    USING ERRCODE = 'CX001';
            END IF;
            RAISE EXCEPTION 'wallet % would pass its balance limit', p_wallets[i]
                USING ERRCODE = 'CX010';
        END IF;
    END LOOP;
END
$$;

CREATE FUNCTION public.ledger_post_once(p_scope character varying, p_owner character varying, p_key character varying, p_request_hash character varying, p_status integer, p_response text, p_event_id character varying, p_event_subject character varying, p_event_payload text, p_event_at timestamp with time zone, p_journal_id uuid, p_kind character varying, p_user_id uuid, p_quote_id character varying, p_reference character varying, p_details text, p_created_at timestamp with time zone, p_entry_accounts uuid[], p_entry_currencies character varying[], p_entry_amounts bigint[], p_wallets uuid[], p_wallet_moves bigint[], p_wallet_limits bigint[]) RETURNS TABLE(request_hash character varying, status_code integer, response text)
    LANGUAGE plpgsql
    AS $$
BEGIN
    RETURN QUERY SELECT * FROM idempotency_claim(
        p_scope => p_scope,
        p_owner => p_owner,
        p_key => p_key,
        p_request_hash => p_request_hash,
        p_created_at => p_created_at,
        p_status => p_status,
        p_response => p_response
    );
    IF FOUND THEN
        RETURN;
    END IF;
    PERFORM ledger_post(
        p_journal_id => p_journal_id,
        p_kind => p_kind,
        p_user_id => p_user_id,
        p_quote_id => p_quote_id,
        p_reference => p_reference,
        p_details => p_details,
        p_created_at => p_created_at,
        p_entry_accounts => p_entry_accounts,
        p_entry_currencies => p_entry_currencies,
        p_entry_amounts => p_entry_amounts,
        p_wallets => p_wallets,
        p_wallet_moves => p_wallet_moves,
        p_wallet_limits => p_wallet_limits
    );
    PERFORM outbox_add(
        p_id => p_event_id,
        p_subject => p_event_subject,
        p_payload => p_event_payload,
        p_created_at => p_event_at
    );
END
$$;

CREATE FUNCTION public.ledger_release(p_hold_id uuid, p_settled_at timestamp with time zone) RETURNS TABLE(amount bigint, status character varying, reference character varying, id uuid, kind character varying, currency character varying, user_id uuid)
    LANGUAGE plpgsql
    AS $$
DECLARE
    released record;
BEGIN
    UPDATE wallet_holds AS h SET status = 'RELEASED', settled_at = p_settled_at
    WHERE h.id = p_hold_id AND h.status = 'HELD'
    RETURNING h.account_id, h.amount INTO released;
    IF FOUND THEN
        UPDATE wallet_accounts AS a SET locked_balance = a.locked_balance - released.amount
        WHERE a.id = released.account_id;
    END IF;
    RETURN QUERY
    SELECT h.amount, h.status, h.reference, a.id, a.kind, a.currency, a.user_id
    FROM wallet_holds AS h JOIN wallet_accounts AS a ON a.id = h.account_id
    WHERE h.id = p_hold_id;
END
$$;

CREATE FUNCTION public.outbox_add(p_id character varying, p_subject character varying, p_payload text, p_created_at timestamp with time zone) RETURNS void
    LANGUAGE sql
    AS $$
    INSERT INTO outbox (id, subject, payload, created_at)
    VALUES (p_id, p_subject, p_payload, p_created_at)
$$;

SET default_tablespace = '';

SET default_table_access_method = heap;

CREATE TABLE public.remit_transactions (
    id uuid NOT NULL,
    reference_id character varying(20) NOT NULL,
    user_id uuid NOT NULL,
    idempotency_key character varying(255) NOT NULL,
    request_hash character varying(64) NOT NULL,
    quote_id character varying(64) NOT NULL,
    status character varying(20) NOT NULL,
    source_amount bigint NOT NULL,
    source_currency character varying(3) NOT NULL,
    target_amount bigint NOT NULL,
    target_currency character varying(3) NOT NULL,
    rate character varying(40) NOT NULL,
    fee bigint NOT NULL,
    total_debit bigint NOT NULL,
    metadata jsonb NOT NULL,
    failure_code integer,
    failure_reason character varying(500),
    partner_reference character varying(200),
    attempts integer DEFAULT 0 NOT NULL,
    next_attempt_at timestamp with time zone,
    lease_until timestamp with time zone,
    deadline_at timestamp with time zone,
    created_at timestamp with time zone NOT NULL,
    updated_at timestamp with time zone NOT NULL,
    CONSTRAINT ck_remit_transactions_amounts CHECK (((source_amount > 0) AND (target_amount > 0) AND (fee >= 0) AND (total_debit > 0))),
    CONSTRAINT ck_remit_transactions_status CHECK (((status)::text = ANY ((ARRAY['CREATED'::character varying, 'PROCESSING'::character varying, 'COMPLETED'::character varying, 'FAILED'::character varying])::text[])))
);

CREATE FUNCTION public.remit_add_once(p_txn public.remit_transactions, p_scope character varying, p_status integer, p_response text, p_event_id character varying, p_event_subject character varying, p_event_payload text, p_event_at timestamp with time zone) RETURNS TABLE(request_hash character varying, status_code integer, response text)
    LANGUAGE plpgsql
    AS $$
BEGIN
    RETURN QUERY SELECT * FROM idempotency_claim(
        p_scope => p_scope,
        p_owner => p_txn.user_id::varchar,
        p_key => p_txn.idempotency_key,
        p_request_hash => p_txn.request_hash,
        p_created_at => p_txn.created_at,
        p_status => p_status,
        p_response => p_response
    );
    IF FOUND THEN
        RETURN;
    END IF;
    INSERT INTO remit_transactions SELECT (p_txn).*
    ON CONFLICT (reference_id) DO NOTHING;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'reference % is taken', p_txn.reference_id USING ERRCODE = 'CX003';
    END IF;
    INSERT INTO remit_status_history (txn_id, status, reason, created_at)
    VALUES (p_txn.id, p_txn.status, NULL, p_txn.created_at);
    PERFORM outbox_add(
        p_id => p_event_id,
        p_subject => p_event_subject,
        p_payload => p_event_payload,
        p_created_at => p_event_at
    );
END
$$;

CREATE FUNCTION public.remit_move(p_txn_id uuid, p_from character varying, p_to character varying, p_at timestamp with time zone, p_failure_code integer, p_failure_reason character varying, p_partner_reference character varying, p_next_attempt_at timestamp with time zone, p_lease_until timestamp with time zone, p_reason character varying, p_event_id character varying, p_event_subject character varying, p_event_payload text, p_event_at timestamp with time zone, p_scope character varying DEFAULT NULL::character varying, p_owner character varying DEFAULT NULL::character varying, p_key character varying DEFAULT NULL::character varying, p_status integer DEFAULT NULL::integer, p_response text DEFAULT NULL::text) RETURNS boolean
    LANGUAGE plpgsql
    AS $$
BEGIN
    UPDATE remit_transactions SET
        status = p_to,
        updated_at = p_at,
        failure_code = p_failure_code,
        failure_reason = p_failure_reason,
        partner_reference = p_partner_reference,
        next_attempt_at = p_next_attempt_at,
        lease_until = p_lease_until
    WHERE id = p_txn_id AND status = p_from;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    INSERT INTO remit_status_history (txn_id, status, reason, created_at)
    VALUES (p_txn_id, p_to, p_reason, p_at);
    IF p_scope IS NOT NULL THEN
        PERFORM idempotency_save(
            p_scope => p_scope,
            p_owner => p_owner,
            p_key => p_key,
            p_status => p_status,
            p_response => p_response
        );
    END IF;
    PERFORM outbox_add(
        p_id => p_event_id,
        p_subject => p_event_subject,
        p_payload => p_event_payload,
        p_created_at => p_event_at
    );
    RETURN true;
END
$$;

CREATE FUNCTION public.wallet_entries_are_append_only() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
            BEGIN
              RAISE EXCEPTION 'ledger entries are append-only' USING ERRCODE = 'check_violation';
            END $$;

CREATE FUNCTION public.wallet_journal_must_balance() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
            BEGIN
              IF EXISTS (
                SELECT 1 FROM wallet_entries WHERE journal_id = NEW.journal_id
                GROUP BY currency HAVING SUM(amount) <> 0
              ) THEN
                RAISE EXCEPTION 'journal % does not sum to zero per currency', NEW.journal_id
                  USING ERRCODE = 'check_violation';
              END IF;
              RETURN NULL;
            END $$;

CREATE TABLE public.alembic_version (
    version_num character varying(32) NOT NULL
);

CREATE TABLE public.audit_log (
    id uuid NOT NULL,
    actor_id uuid NOT NULL,
    action character varying(50) NOT NULL,
    subject_type character varying(30) NOT NULL,
    subject_id character varying(64) NOT NULL,
    detail text NOT NULL,
    at timestamp with time zone NOT NULL
);

CREATE TABLE public.auth_refresh_tokens (
    id uuid NOT NULL,
    user_id uuid NOT NULL,
    family_id uuid NOT NULL,
    token_hash character varying(64) NOT NULL,
    created_at timestamp with time zone NOT NULL,
    expires_at timestamp with time zone NOT NULL,
    spent_at timestamp with time zone,
    revoked_at timestamp with time zone
);

CREATE TABLE public.auth_users (
    id uuid NOT NULL,
    email character varying(320) NOT NULL,
    password_hash character varying(255) NOT NULL,
    full_name character varying(200) NOT NULL,
    role character varying(20) NOT NULL,
    kyc_status character varying(20),
    kyc_reason character varying(500),
    tier character varying(20) NOT NULL,
    disabled boolean DEFAULT false NOT NULL,
    created_at timestamp with time zone NOT NULL,
    updated_at timestamp with time zone NOT NULL,
    version integer DEFAULT 1 NOT NULL,
    kyc_updated_at timestamp with time zone NOT NULL,
    CONSTRAINT ck_auth_users_kyc_customers_only CHECK ((((role)::text = 'CUSTOMER'::text) = (kyc_status IS NOT NULL))),
    CONSTRAINT ck_auth_users_kyc_status CHECK (((kyc_status)::text = ANY ((ARRAY['PENDING'::character varying, 'IN_REVIEW'::character varying, 'APPROVED'::character varying, 'REJECTED'::character varying])::text[]))),
    CONSTRAINT ck_auth_users_role CHECK (((role)::text = ANY ((ARRAY['CUSTOMER'::character varying, 'TELLER'::character varying, 'COMPLIANCE'::character varying, 'ADMIN'::character varying])::text[]))),
    CONSTRAINT ck_auth_users_tier CHECK (((tier)::text = ANY ((ARRAY['BASIC'::character varying, 'PRO'::character varying])::text[])))
);

CREATE TABLE public.docs_documents (
    id uuid NOT NULL,
    user_id uuid NOT NULL,
    doc_type character varying(20) NOT NULL,
    status character varying(20) NOT NULL,
    content_type character varying(50) NOT NULL,
    size_bytes integer NOT NULL,
    sha256 character varying(64) NOT NULL,
    object_path character varying(200) NOT NULL,
    created_at timestamp with time zone NOT NULL,
    CONSTRAINT ck_docs_documents_content_type CHECK (((content_type)::text = ANY ((ARRAY['image/jpeg'::character varying, 'image/png'::character varying, 'application/pdf'::character varying])::text[]))),
    CONSTRAINT ck_docs_documents_doc_type CHECK (((doc_type)::text = ANY ((ARRAY['passport_front'::character varying, 'passport_back'::character varying, 'national_id'::character varying, 'utility_bill'::character varying, 'selfie'::character varying])::text[]))),
    CONSTRAINT ck_docs_documents_size CHECK (((size_bytes > 0) AND (size_bytes <= 10485760))),
    CONSTRAINT ck_docs_documents_status CHECK (((status)::text = ANY ((ARRAY['UPLOADED'::character varying, 'SUPERSEDED'::character varying])::text[])))
);

CREATE TABLE public.idempotency_keys (
    scope character varying(50) NOT NULL,
    owner character varying(64) NOT NULL,
    key character varying(255) NOT NULL,
    request_hash character varying(64) NOT NULL,
    status_code integer NOT NULL,
    response text NOT NULL,
    created_at timestamp with time zone NOT NULL
);

CREATE TABLE public.outbox (
    id character varying(36) NOT NULL,
    subject character varying(200) NOT NULL,
    payload text NOT NULL,
    created_at timestamp with time zone NOT NULL,
    published_at timestamp with time zone
);

CREATE TABLE public.processed_events (
    consumer character varying(100) NOT NULL,
    event_id character varying(36) NOT NULL,
    processed_at timestamp with time zone NOT NULL
);

CREATE TABLE public.remit_mismatches (
    id uuid NOT NULL,
    txn_id uuid NOT NULL,
    our_status character varying(20) NOT NULL,
    partner_status character varying(20) NOT NULL,
    partner_reason character varying(500),
    partner_reference character varying(200),
    found_at timestamp with time zone NOT NULL,
    state character varying(20) NOT NULL,
    resolved_by uuid,
    resolved_at timestamp with time zone,
    note character varying(500),
    journal_id uuid,
    CONSTRAINT ck_remit_mismatches_state CHECK (((state)::text = ANY ((ARRAY['OPEN'::character varying, 'CORRECTING'::character varying, 'CORRECTED'::character varying, 'DISMISSED'::character varying])::text[])))
);

CREATE TABLE public.remit_status_history (
    id bigint NOT NULL,
    txn_id uuid NOT NULL,
    status character varying(20) NOT NULL,
    reason character varying(500),
    created_at timestamp with time zone NOT NULL,
    CONSTRAINT ck_remit_status_history_status CHECK (((status)::text = ANY ((ARRAY['CREATED'::character varying, 'PROCESSING'::character varying, 'COMPLETED'::character varying, 'FAILED'::character varying])::text[])))
);

CREATE SEQUENCE public.remit_status_history_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

ALTER SEQUENCE public.remit_status_history_id_seq OWNED BY public.remit_status_history.id;

CREATE TABLE public.wallet_accounts (
    id uuid NOT NULL,
    key character varying(80) NOT NULL,
    kind character varying(20) NOT NULL,
    user_id uuid,
    currency character varying(3) NOT NULL,
    balance bigint DEFAULT '0'::bigint NOT NULL,
    locked_balance bigint DEFAULT '0'::bigint NOT NULL,
    created_at timestamp with time zone NOT NULL,
    CONSTRAINT ck_wallet_accounts_available CHECK ((((kind)::text <> 'WALLET'::text) OR (balance >= locked_balance))),
    CONSTRAINT ck_wallet_accounts_kind CHECK (((kind)::text = ANY ((ARRAY['WALLET'::character varying, 'CASH_IN'::character varying, 'FX_POSITION'::character varying, 'FEE_REVENUE'::character varying, 'PAYOUT_SUSPENSE'::character varying])::text[]))),
    CONSTRAINT ck_wallet_accounts_locked CHECK ((locked_balance >= 0))
);

CREATE TABLE public.wallet_entries (
    id bigint NOT NULL,
    journal_id uuid NOT NULL,
    account_id uuid NOT NULL,
    currency character varying(3) NOT NULL,
    amount bigint NOT NULL,
    created_at timestamp with time zone NOT NULL,
    CONSTRAINT ck_wallet_entries_nonzero CHECK ((amount <> 0))
);

CREATE SEQUENCE public.wallet_entries_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

ALTER SEQUENCE public.wallet_entries_id_seq OWNED BY public.wallet_entries.id;

CREATE TABLE public.wallet_holds (
    id uuid NOT NULL,
    account_id uuid NOT NULL,
    amount bigint NOT NULL,
    status character varying(20) NOT NULL,
    reference character varying(200),
    journal_id uuid,
    created_at timestamp with time zone NOT NULL,
    settled_at timestamp with time zone,
    CONSTRAINT ck_wallet_holds_positive CHECK ((amount > 0)),
    CONSTRAINT ck_wallet_holds_status CHECK (((status)::text = ANY ((ARRAY['HELD'::character varying, 'CAPTURED'::character varying, 'RELEASED'::character varying])::text[])))
);

CREATE TABLE public.wallet_journals (
    id uuid NOT NULL,
    kind character varying(20) NOT NULL,
    user_id uuid,
    quote_id character varying(64),
    reference character varying(200),
    details text,
    created_at timestamp with time zone NOT NULL
);

ALTER TABLE ONLY public.remit_status_history ALTER COLUMN id SET DEFAULT nextval('public.remit_status_history_id_seq'::regclass);

ALTER TABLE ONLY public.wallet_entries ALTER COLUMN id SET DEFAULT nextval('public.wallet_entries_id_seq'::regclass);

ALTER TABLE ONLY public.alembic_version
    ADD CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num);

ALTER TABLE ONLY public.audit_log
    ADD CONSTRAINT audit_log_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.auth_refresh_tokens
    ADD CONSTRAINT auth_refresh_tokens_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.auth_refresh_tokens
    ADD CONSTRAINT auth_refresh_tokens_token_hash_key UNIQUE (token_hash);

ALTER TABLE ONLY public.auth_users
    ADD CONSTRAINT auth_users_email_key UNIQUE (email);

ALTER TABLE ONLY public.auth_users
    ADD CONSTRAINT auth_users_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.docs_documents
    ADD CONSTRAINT docs_documents_object_path_key UNIQUE (object_path);

ALTER TABLE ONLY public.docs_documents
    ADD CONSTRAINT docs_documents_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.idempotency_keys
    ADD CONSTRAINT idempotency_keys_pkey PRIMARY KEY (scope, owner, key);

ALTER TABLE ONLY public.outbox
    ADD CONSTRAINT outbox_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.processed_events
    ADD CONSTRAINT processed_events_pkey PRIMARY KEY (consumer, event_id);

ALTER TABLE ONLY public.remit_mismatches
    ADD CONSTRAINT remit_mismatches_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.remit_status_history
    ADD CONSTRAINT remit_status_history_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.remit_transactions
    ADD CONSTRAINT remit_transactions_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.remit_mismatches
    ADD CONSTRAINT uq_remit_mismatches_disagreement UNIQUE (txn_id, our_status, partner_status);

ALTER TABLE ONLY public.remit_transactions
    ADD CONSTRAINT uq_remit_transactions_reference UNIQUE (reference_id);

ALTER TABLE ONLY public.wallet_accounts
    ADD CONSTRAINT wallet_accounts_key_key UNIQUE (key);

ALTER TABLE ONLY public.wallet_accounts
    ADD CONSTRAINT wallet_accounts_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.wallet_entries
    ADD CONSTRAINT wallet_entries_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.wallet_holds
    ADD CONSTRAINT wallet_holds_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.wallet_journals
    ADD CONSTRAINT wallet_journals_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.wallet_journals
    ADD CONSTRAINT wallet_journals_quote_id_key UNIQUE (quote_id);

CREATE INDEX ix_audit_log_actor ON public.audit_log USING btree (actor_id, at);

CREATE INDEX ix_audit_log_subject ON public.audit_log USING btree (subject_type, subject_id, at);

CREATE INDEX ix_auth_refresh_tokens_family ON public.auth_refresh_tokens USING btree (family_id);

CREATE INDEX ix_auth_refresh_tokens_user ON public.auth_refresh_tokens USING btree (user_id);

CREATE INDEX ix_auth_users_kyc_queue ON public.auth_users USING btree (kyc_status, kyc_updated_at);

CREATE INDEX ix_auth_users_kyc_status ON public.auth_users USING btree (kyc_status);

CREATE INDEX ix_auth_users_role ON public.auth_users USING btree (role);

CREATE INDEX ix_docs_documents_user ON public.docs_documents USING btree (user_id, id);

CREATE INDEX ix_idempotency_keys_created_at ON public.idempotency_keys USING btree (created_at);

CREATE INDEX ix_outbox_unpublished ON public.outbox USING btree (created_at) WHERE (published_at IS NULL);

CREATE INDEX ix_remit_mismatches_state ON public.remit_mismatches USING btree (state, id);

CREATE INDEX ix_remit_status_history_txn ON public.remit_status_history USING btree (txn_id, id);

CREATE INDEX ix_remit_transactions_due ON public.remit_transactions USING btree (status, next_attempt_at);

CREATE INDEX ix_remit_transactions_user ON public.remit_transactions USING btree (user_id, id);

CREATE INDEX ix_wallet_accounts_user ON public.wallet_accounts USING btree (user_id);

CREATE INDEX ix_wallet_entries_account ON public.wallet_entries USING btree (account_id, id);

CREATE INDEX ix_wallet_entries_journal ON public.wallet_entries USING btree (journal_id);

CREATE INDEX ix_wallet_holds_account ON public.wallet_holds USING btree (account_id, status);

CREATE TRIGGER audit_log_append_only BEFORE DELETE OR UPDATE ON public.audit_log FOR EACH ROW EXECUTE FUNCTION public.audit_log_is_append_only();

CREATE TRIGGER wallet_entries_append_only BEFORE DELETE OR UPDATE ON public.wallet_entries FOR EACH ROW EXECUTE FUNCTION public.wallet_entries_are_append_only();

CREATE CONSTRAINT TRIGGER wallet_entries_balanced AFTER INSERT ON public.wallet_entries DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION public.wallet_journal_must_balance();

ALTER TABLE ONLY public.auth_refresh_tokens
    ADD CONSTRAINT auth_refresh_tokens_user_id_fkey FOREIGN KEY (user_id) REFERENCES public.auth_users(id) ON DELETE CASCADE;

ALTER TABLE ONLY public.remit_mismatches
    ADD CONSTRAINT remit_mismatches_txn_id_fkey FOREIGN KEY (txn_id) REFERENCES public.remit_transactions(id);

ALTER TABLE ONLY public.remit_status_history
    ADD CONSTRAINT remit_status_history_txn_id_fkey FOREIGN KEY (txn_id) REFERENCES public.remit_transactions(id);

ALTER TABLE ONLY public.wallet_entries
    ADD CONSTRAINT wallet_entries_account_id_fkey FOREIGN KEY (account_id) REFERENCES public.wallet_accounts(id);

ALTER TABLE ONLY public.wallet_entries
    ADD CONSTRAINT wallet_entries_journal_id_fkey FOREIGN KEY (journal_id) REFERENCES public.wallet_journals(id);

ALTER TABLE ONLY public.wallet_holds
    ADD CONSTRAINT wallet_holds_account_id_fkey FOREIGN KEY (account_id) REFERENCES public.wallet_accounts(id);


INSERT INTO public.alembic_version (version_num) VALUES ('0011');
