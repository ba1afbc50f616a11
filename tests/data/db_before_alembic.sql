BEGIN TRANSACTION;
CREATE TABLE classifications (
	sop_instance_uid VARCHAR(64) NOT NULL, 
	label_set VARCHAR(64) NOT NULL, 
	study_uid VARCHAR(64) NOT NULL, 
	series_uid VARCHAR(64) NOT NULL, 
	label TEXT NOT NULL, 
	probability FLOAT NOT NULL, 
	probabilities TEXT NOT NULL, 
	model_name VARCHAR(64) NOT NULL, 
	model_version VARCHAR(128) NOT NULL, 
	rule_name VARCHAR(128) NOT NULL, 
	created_at FLOAT NOT NULL, 
	PRIMARY KEY (sop_instance_uid, label_set)
);
CREATE TABLE embeddings (
	id INTEGER NOT NULL, 
	sop_instance_uid VARCHAR(64) NOT NULL, 
	series_uid VARCHAR(64) NOT NULL, 
	study_uid VARCHAR(64) NOT NULL, 
	model_name VARCHAR(64) NOT NULL, 
	model_version VARCHAR(128) NOT NULL, 
	dim INTEGER NOT NULL, 
	vector BLOB NOT NULL, 
	created_at FLOAT NOT NULL, 
	PRIMARY KEY (id), 
	CONSTRAINT uq_embedding_instance_model UNIQUE (sop_instance_uid, model_name, model_version)
);
CREATE TABLE instances (
	sop_instance_uid VARCHAR(64) NOT NULL, 
	study_uid VARCHAR(64) NOT NULL, 
	series_uid VARCHAR(64) NOT NULL, 
	sop_class_uid VARCHAR(64) NOT NULL, 
	transfer_syntax_uid VARCHAR(64) NOT NULL, 
	path TEXT NOT NULL, 
	size_bytes INTEGER NOT NULL, 
	calling_ae VARCHAR(16) NOT NULL, 
	received_at FLOAT NOT NULL, 
	is_prior BOOLEAN NOT NULL, 
	PRIMARY KEY (sop_instance_uid)
);
INSERT INTO "instances" VALUES('1.2.826.0.1.3680043.10.543.1.1.1','1.2.826.0.1.3680043.10.543.1','1.2.826.0.1.3680043.10.543.1.1','1.2.840.10008.5.1.4.1.1.1','1.2.840.10008.1.2.1','@SPOOL_PATH@',1234,'MODALITY',1.79596677259485244752e+09,0);
CREATE TABLE jobs (
	id INTEGER NOT NULL, 
	job_uid VARCHAR(64) NOT NULL, 
	study_uid VARCHAR(64) NOT NULL, 
	study_version INTEGER NOT NULL, 
	rule_name VARCHAR(128) NOT NULL, 
	endpoint VARCHAR(128) NOT NULL, 
	series_uids TEXT NOT NULL, 
	state VARCHAR(16) NOT NULL, 
	attempts INTEGER NOT NULL, 
	lease_owner VARCHAR(128), 
	lease_until FLOAT, 
	next_attempt_at FLOAT NOT NULL, 
	created_at FLOAT NOT NULL, 
	updated_at FLOAT NOT NULL, 
	outcome TEXT, 
	endpoint_seconds FLOAT, 
	PRIMARY KEY (id), 
	CONSTRAINT uq_job_study_rule_version UNIQUE (study_uid, rule_name, study_version), 
	UNIQUE (job_uid)
);
INSERT INTO "jobs" VALUES(1,'fa98d1e6732f41aba4859a824a010be7','1.2.826.0.1.3680043.10.543.1',1,'chest-xray-findings','cxr','["1.2.826.0.1.3680043.10.543.1.1"]','done',1,NULL,NULL,1.79596677260673618314e+09,1.79596677260673618314e+09,1.79596677261447310448e+09,'report written',NULL);
CREATE TABLE outbox (
	id INTEGER NOT NULL, 
	result_uid VARCHAR(64) NOT NULL, 
	destination VARCHAR(128) NOT NULL, 
	state VARCHAR(16) NOT NULL, 
	attempts INTEGER NOT NULL, 
	next_attempt_at FLOAT NOT NULL, 
	lease_owner VARCHAR(128), 
	lease_until FLOAT, 
	last_status VARCHAR(32), 
	error TEXT, 
	created_at FLOAT NOT NULL, 
	delivered_at FLOAT, 
	PRIMARY KEY (id), 
	CONSTRAINT uq_outbox_result_destination UNIQUE (result_uid, destination), 
	FOREIGN KEY(result_uid) REFERENCES results (sop_instance_uid)
);
INSERT INTO "outbox" VALUES(1,'1.2.826.0.1.3680043.10.543.1.9.1','pacs','pending',0,1.79596677261447310448e+09,NULL,NULL,NULL,NULL,1.79596677261447310448e+09,NULL);
CREATE TABLE priors (
	id INTEGER NOT NULL, 
	for_study_uid VARCHAR(64) NOT NULL, 
	prior_study_uid VARCHAR(64), 
	state VARCHAR(16) NOT NULL, 
	outcome TEXT, 
	started_at FLOAT NOT NULL, 
	finished_at FLOAT, 
	seconds FLOAT, 
	PRIMARY KEY (id)
);
CREATE TABLE quarantine (
	id INTEGER NOT NULL, 
	path TEXT NOT NULL, 
	reason TEXT NOT NULL, 
	sop_instance_uid VARCHAR(64), 
	calling_ae VARCHAR(16), 
	received_at FLOAT NOT NULL, 
	PRIMARY KEY (id)
);
CREATE TABLE results (
	sop_instance_uid VARCHAR(64) NOT NULL, 
	job_id INTEGER NOT NULL, 
	study_uid VARCHAR(64) NOT NULL, 
	series_uid VARCHAR(64) NOT NULL, 
	sop_class_uid VARCHAR(64) NOT NULL, 
	kind VARCHAR(16) NOT NULL, 
	path TEXT NOT NULL, 
	created_at FLOAT NOT NULL, 
	PRIMARY KEY (sop_instance_uid), 
	FOREIGN KEY(job_id) REFERENCES jobs (id)
);
INSERT INTO "results" VALUES('1.2.826.0.1.3680043.10.543.1.9.1',1,'1.2.826.0.1.3680043.10.543.1','1.2.826.0.1.3680043.10.543.1.9','1.2.840.10008.5.1.4.1.1.88.33','sr','@RESULT_PATH@',1.79596677261447310448e+09);
CREATE TABLE studies (
	study_uid VARCHAR(64) NOT NULL, 
	state VARCHAR(16) NOT NULL, 
	version INTEGER NOT NULL, 
	first_received_at FLOAT NOT NULL, 
	last_received_at FLOAT NOT NULL, 
	check_due_at FLOAT, 
	completed_at FLOAT, 
	is_prior BOOLEAN NOT NULL, 
	note TEXT, 
	PRIMARY KEY (study_uid)
);
INSERT INTO "studies" VALUES('1.2.826.0.1.3680043.10.543.1','done',1,1.79596677259485244752e+09,1.79596677259485244752e+09,NULL,1.79596677260277962683e+09,0,NULL);
CREATE TABLE text_embeddings (
	endpoint VARCHAR(128) NOT NULL, 
	model_version VARCHAR(128) NOT NULL, 
	text VARCHAR(512) NOT NULL, 
	vector BLOB NOT NULL, 
	scaling_factor FLOAT, 
	created_at FLOAT NOT NULL, 
	PRIMARY KEY (endpoint, model_version, text)
);
CREATE INDEX ix_instances_study_uid ON instances (study_uid);
CREATE INDEX ix_jobs_study_uid ON jobs (study_uid);
CREATE INDEX ix_priors_for_study_uid ON priors (for_study_uid);
CREATE INDEX ix_priors_prior_study_uid ON priors (prior_study_uid);
CREATE INDEX ix_embeddings_study_uid ON embeddings (study_uid);
CREATE INDEX ix_classifications_study_uid ON classifications (study_uid);
CREATE INDEX ix_results_study_uid ON results (study_uid);
CREATE INDEX ix_results_job_id ON results (job_id);
CREATE INDEX ix_outbox_due ON outbox (destination, state, next_attempt_at);
COMMIT;
