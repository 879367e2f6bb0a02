"""The README's promises, each next to the tests that prove it.

A promise is quoted as it stands in README.md (whitespace aside); the test below fails when the README no longer
says it (edit the quote with the README) or when a named test no longer exists. The tests themselves are what
fails when the behaviour breaks; those marked "broken on purpose" were checked to fail with the behaviour removed.
"""

import importlib
import re

import pytest

from selfsup.config import ROOT

PROMISES = {
    # -- checkpoints, crashes, resume
    "`checkpoints/last.ckpt` is written at the end of every epoch": [
        "tests/runtime/test_autosave.py::test_kill_9_mid_epoch_loses_only_the_steps_since_the_epoch_checkpoint",
        "tests/runtime/test_autosave.py::test_time_based_saves_and_kept_epoch_copies",
    ],
    "replaced atomically (a crash or a full disk mid-write leaves the previous file)": [
        "tests/runtime/test_checkpoint.py::test_atomic_save_keeps_the_previous_checkpoint",
        "tests/runtime/test_files.py::test_a_failed_write_keeps_the_previous_file",
        "tests/runtime/test_autosave.py::test_full_disk_during_training",
    ],
    "A checkpoint whose weights hold NaN/Inf is never written (parameters and buffers, BatchNorm statistics": [
        "tests/runtime/test_guards.py::test_first_non_finite_loss_stops_with_the_step_and_keeps_the_finite_checkpoint",
        "tests/runtime/test_autosave.py::test_no_checkpoint_holds_a_non_finite_buffer",  # broken on purpose
    ],
    "and `metrics.csv` on disk holds every row up to the checkpoint (the resumed run continues them exactly)": [
        # broken on purpose:
        "tests/runtime/test_loggers.py::test_kill_9_right_after_a_checkpoint_keeps_its_metric_rows",
    ],
    "Ctrl-C saves `last.ckpt` at the end of the step like SIGTERM and exits 130": [
        "tests/runtime/test_preemption.py::test_ctrl_c_saves_at_the_end_of_the_step_and_resume_is_bit_exact",
        "tests/runtime/test_preemption.py::test_ctrl_c_from_a_terminal_with_loader_workers",  # broken on purpose
    ],
    "keeps the LR schedule planned at the start (past its end: the final": [
        # broken on purpose:
        "tests/train/test_optim.py::test_a_resume_that_changes_the_runs_length_keeps_the_lr_schedule",
        "tests/train/test_optim.py::test_a_shorter_resumed_run_keeps_the_lr_schedule",
    ],
    "so a misspelt swept key or `objective.temperature=0.2,0` fails in one line before any point": [
        "tests/runtime/test_sweep.py::test_bad_sweeps_fail_in_one_line_before_launching",  # broken on purpose
        "tests/runtime/test_sweep.py::test_local_sweep_cli_checks_first_then_optuna_maximises_rankme",
    ],
    "can be passed back unquoted to": [
        # broken on purpose:
        "tests/test_commands.py::test_sweep_point_directories_as_arguments_and_what_train_log_holds",
        "tests/runtime/test_errors.py::test_path_values_reach_hydra_as_the_path",
        "tests/evaluate/test_cli.py::test_a_sweep_point_is_evaluated_unquoted_and_the_files_are_named",
    ],
    "continues from `last.ckpt` **with the config saved in it**": [
        "tests/runtime/test_resume.py::test_resume_true_restores_the_runs_own_config",
    ],
    "at the same step, LR schedule and data order (mid-epoch, on an epoch's last step and between epochs alike": [
        "tests/runtime/test_resume.py::test_preempted_anywhere_in_an_epoch_resumes_bit_for_bit",  # broken on purpose
        "tests/runtime/test_resume.py::test_crash_between_epochs_resumes_from_the_epoch_checkpoint",
        "tests/runtime/test_resume.py::test_resume_with_loader_workers",
        "tests/runtime/test_resume.py::test_resume_on_the_device_view_path",
        "tests/runtime/test_resume.py::test_two_process_run_resumes_bit_for_bit",
        "tests/runtime/test_strategies.py::test_deepspeed_zero_resume_equals_the_uninterrupted_run",
        "tests/train/test_grad_cache.py::test_a_cached_run_resumes_bit_for_bit",
    ],
    "those are recorded in `.hydra/resumes.yaml`, anything else is refused in one line": [
        "tests/runtime/test_resume.py::test_resume_refuses_a_changed_setting_and_records_a_safe_one",
    ],
    "A run directory that was moved or copied resumes in its new place.": [
        "tests/runtime/test_resume.py::test_a_copied_run_continues_in_its_new_directory",
    ],
    "A new run into a directory that holds one is refused before anything is written there": [
        "tests/train/test_cli.py::test_cli_refused_new_run_leaves_the_used_directory_alone",
    ],
    "says so instead of starting over": [
        "tests/runtime/test_resume.py::test_resume_without_a_checkpoint_in_a_used_directory_stops",
    ],
    "a directory that holds another run is refused, untouched": [
        "tests/runtime/test_resume.py::test_ckpt_path_into_another_runs_directory_is_refused",  # broken on purpose
    ],
    "directory that holds no run at all it is refused (a mistyped path never starts over": [
        "tests/runtime/test_resume.py::test_resume_true_on_a_directory_without_a_run_is_refused",  # broken on purpose
        "tests/test_slurm.py::test_hydra_sweep_through_submitit_with_a_preempted_point",
    ],
    "step (a corrupt image; only `.hydra/` and `train.log` left) is started over by the same command": [
        "tests/runtime/test_resume.py::test_a_run_that_failed_before_its_first_step_is_rerun_by_the_same_command",
    ],
    "anything else is refused in one line naming the key and the target": [
        "tests/runtime/test_saved_config.py::test_no_command_instantiates_a_hostile_saved_config",  # broken on purpose
        "tests/runtime/test_saved_config.py::test_a_fuzz_of_nested_targets_is_refused_wherever_it_hides",
        "tests/runtime/test_saved_config.py::test_every_recipe_as_saved_passes",
        "tests/runtime/test_saved_config.py::test_a_user_trusts_their_own_constructor",
    ],
    "refuse a checkpoint whose weights or buffers hold NaN/Inf": [
        "tests/runtime/test_saved_config.py::test_load_refuses_non_finite_weights_and_buffers",
    ],
    "a `.ckpt` whose pickle would run code is refused in one line": [
        "tests/runtime/test_checkpoint.py::test_load_refuses_a_booby_trapped_checkpoint",
        "tests/runtime/test_checkpoint.py::test_no_command_runs_code_from_a_checkpoint",
        "tests/runtime/test_checkpoint.py::test_a_booby_trapped_deepspeed_shard_is_refused",
    ],
    "A second training into a directory a live run holds is refused, naming the holder's host and PID": [
        "tests/runtime/test_lock.py::test_a_live_holder_is_refused_with_its_name",
        "tests/runtime/test_lock.py::test_two_trainings_in_one_directory",
    ],
    "the lock of a killed run is taken over": [
        "tests/runtime/test_lock.py::test_the_lock_of_a_killed_process_is_taken_over",
        "tests/runtime/test_lock.py::test_requeued_slurm_job_and_silent_remote_host_are_stale",
    ],
    "A non-finite training loss stops the run with one line naming the step": [
        "tests/runtime/test_guards.py::test_first_non_finite_loss_stops_with_the_step_and_keeps_the_finite_checkpoint",
        "tests/runtime/test_guards.py::test_huge_learning_rate_ends_in_one_line_from_the_cli",
        "tests/runtime/test_guards.py::test_skipped_step_leaves_weights_and_optimiser_state_alone",
    ],
    "A representation that collapses is logged": [
        "tests/runtime/test_guards.py::test_a_collapsing_run_is_warned_about_once_with_its_step",
    ],
    "a 2-process run follows the 1-process loss curve": [
        "tests/train/test_cli.py::test_two_processes_equal_one_on_the_same_global_batch",
        "tests/train/test_cli.py::test_views_do_not_depend_on_workers",
        "tests/data/test_views.py::test_global_batches_do_not_depend_on_world_size",
    ],
    # -- processes, BatchNorm, big batches
    "A 2-process CPU run of a model with BatchNorm is therefore the 1-process model run on each half": [
        "tests/train/test_cli.py::test_two_cpu_processes_normalise_batchnorm_per_process",
        "tests/train/test_cli.py::test_two_gpus_with_syncbatchnorm_equal_one",
    ],
    "with several CPU processes it is refused with a message": [
        "tests/runtime/test_strategies.py::test_sync_batchnorm_on_cpu_is_refused",
    ],
    "a contrastive loss then sees K times fewer negatives than the global batch (the run warns)": [
        "tests/train/test_grad_cache.py::test_accumulation_without_caching_sees_fewer_negatives",
        "tests/train/test_grad_cache.py::test_a_run_with_chunks_follows_the_whole_batch_run_and_accumulation_does_not",
    ],
    "equal to one big batch in float64 for BatchNorm-free models": [
        "tests/train/test_grad_cache.py::test_chunks_give_the_whole_batch_loss_and_gradient",  # broken on purpose
        "tests/train/test_grad_cache.py::test_second_pass_replays_each_chunks_random_state_and_batchnorm_updates_once",
    ],
    # -- sweeps and SLURM
    "one run directory per point, named by its swept keys only": [
        "tests/runtime/test_sweep.py::test_sweep_runs_are_named_by_the_swept_keys_only",
    ],
    "every point is composed and checked before the first starts": [
        "tests/runtime/test_sweep.py::test_bad_sweeps_fail_in_one_line_before_launching",
        "tests/runtime/test_sweep.py::test_local_sweep_cli_checks_first_then_optuna_maximises_rankme",
    ],
    "a missing partition or more GPUs than a node has is refused before anything is submitted": [
        "tests/test_slurm.py::test_bad_launcher_input_submits_nothing",
    ],
    "every rank saves `checkpoints/last.ckpt` at the end of its step and the job is requeued": [
        "tests/test_slurm.py::test_sbatch_template_two_ranks_requeue_themselves_on_usr1",
        "tests/test_slurm.py::test_scontrol_requeue_mid_run_resumes_from_checkpoint",
        "tests/runtime/test_preemption.py::test_signal_saves_last_and_resume_is_bit_exact",
    ],
    # -- evaluation and export
    "A sweep directory (runs at any depth below it) gets a ranking table of all runs": [
        "tests/evaluate/test_evaluate.py::test_sweep_dir_is_ranked_with_rank_correlations",
        "tests/evaluate/test_evaluate.py::test_sweep_runs_are_found_at_any_depth_and_sweep_json_is_strict",
    ],
    "`eval.protocols` adds 5-way 1- and 5-shot episodes (Tian et al. 2020's\nprotocol": [
        "tests/evaluate/test_protocols.py::test_fewshot_equals_sklearn_logistic_regression_on_the_same_episodes",
        "tests/evaluate/test_protocols.py::test_nmi_and_ari_equal_sklearn",
        "tests/evaluate/test_protocols.py::test_kmeans_finds_sklearns_partition_and_inertia",
        "tests/test_neighbours.py::test_precision_and_map_at_r_equal_float64_references",
        "tests/evaluate/test_evaluate.py::test_every_cached_feature_protocol_matches_its_function_and_reaches_the_reports",
        "tests/evaluate/test_evaluate.py::test_bad_protocol_settings_are_refused_in_one_line_before_anything_is_written",
    ],
    "12 of CIFAR-10-C's 15 corruptions × 5 severities, generated here and scored by the clean\nlinear probe": [
        "tests/evaluate/test_corruptions.py::test_each_corruption_equals_the_published_function_at_every_severity",
        "tests/evaluate/test_evaluate.py::test_corruption_protocol_scores_the_clean_probe_on_corrupted_images",
    ],
    "fine-tuning of the whole encoder (MAE's recipe: AdamW, warm-up and cosine, layer-wise\nLR decay for ViTs": [
        "tests/evaluate/test_finetune.py::test_every_parameter_follows_the_hand_computed_schedule",
        "tests/evaluate/test_finetune.py::test_vit_groups_decay_the_lr_layer_by_layer_and_exempt_what_mae_exempts",
        "tests/evaluate/test_finetune.py::test_a_random_init_cnn_fine_tuned_on_digits_reaches_70_percent",
        "tests/evaluate/test_evaluate.py::test_finetune_protocol_reaches_metrics_and_reports_and_refuses_bad_settings_first",
    ],
    "a sweep report ranks the runs by it\nand correlates every label-free score with it": [
        "tests/evaluate/test_evaluate.py::test_sweep_dir_is_ranked_with_rank_correlations",
    ],
    "Features are cached per checkpoint, data and transform.": [
        "tests/evaluate/test_evaluate.py::test_features_are_cached_and_invalidated_by_a_new_checkpoint",
        "tests/evaluate/test_evaluate.py::test_feature_cache_is_invalidated_when_the_images_or_the_transform_change",
    ],
    "selfsup-export checkpoint=<run dir> out=encoder.safetensors     # timm key names": [
        "tests/export/test_export.py::test_timm_loads_the_export_with_no_missing_keys_and_same_features",
        "tests/evaluate/test_evaluate.py::test_eval_and_export_of_a_trained_run_whose_data_moved",
    ],
    "selfsup-eval checkpoint=<run dir> data.root=/new/place/of/the/data   # override fields of the saved data config": [
        "tests/evaluate/test_evaluate.py::test_eval_and_export_of_a_trained_run_whose_data_moved",
    ],
    "selfsup-eval checkpoint=random backbone.name=resnet18 data=cifar10 data.root=...   # the random-init baseline": [
        "tests/evaluate/test_evaluate.py::test_random_encoder_baseline",
    ],
    "the singular-value spectrum and a PCA\nmap": [
        "tests/evaluate/test_evaluate.py::test_pca_map_and_spectrum_pngs",
        "tests/evaluate/test_evaluate.py::test_run_dir_writes_metrics_matching_the_metric_functions",
    ],
    "DeepSpeed shard directories are read directly.": [
        "tests/runtime/test_strategies.py::test_deepspeed_zero_resume_equals_the_uninterrupted_run",
    ],
    "the W&B run id derives from the run directory, so a\nresumed run continues its W&B run": [
        "tests/runtime/test_loggers.py::test_wandb_offline_logs_the_training_and_a_resume_continues_the_same_run",
    ],
    "are the sharded alternatives to `trainer=ddp`": [
        "tests/runtime/test_strategies.py::test_fsdp_equals_ddp_equals_one_process",
        "tests/runtime/test_strategies.py::test_deepspeed_zero_resume_equals_the_uninterrupted_run",
    ],
    # -- methods and objectives
    "Every objective is tested against its paper's official": [
        "tests/objectives/test_distributed.py::test_two_processes_equal_one",
        "tests/objectives/test_negative_cosine.py::test_simsiam_form_against_a_loop_with_its_gradient",
        "tests/train/test_parts.py::test_simsiam_module_equals_algorithm_1",
        "tests/train/test_parts.py::test_byol_module_equals_the_symmetrised_loss_and_update",
    ],
    "works with every pair-scoring\nobjective": [
        "tests/train/test_parts.py::test_multicrop_trains_pair_scoring_methods",
        "tests/train/test_parts.py::test_multicrop_runs_one_backbone_call_per_resolution",
    ],
    "interpolate their position embedding for the local crops": [
        "tests/models/test_backbones.py::test_vision_transformers_take_small_and_multi_crop_inputs",
    ],
    # -- the quickstart tables
    "a test holds\neach row to its recipe": [
        "tests/bench/test_objectives_table.py::test_each_row_uses_the_parts_of_its_recipe",  # broken on purpose
    ],
    "Every method beats random init on kNN (both k) and on the 5-label probe (a masked row: its own ViT at random "
    "init), except PIRL with the paper's fixed Z, which collapses at this scale": [
        "tests/bench/test_objectives_table.py::test_the_readme_shows_the_written_tables_and_every_method_beats_random_init",
    ],
    # -- bad input
    "Commands end with one line naming the key or file and what was expected": [
        "tests/train/test_cli.py::test_cli_bad_input_is_one_line_and_exit_2",
        "tests/train/test_cli.py::test_bad_input_is_refused_before_training",
        "tests/evaluate/test_evaluate.py::test_cli_prints_one_line_error_and_exits_2",
        "tests/export/test_export.py::test_export_errors",
    ],
    "`selfsup-train --help` lists them all": [
        "tests/train/test_cli.py::test_cli_help_lists_every_recipe",
    ],
    "A corrupt image is named,\nalso when a DataLoader worker hit it": [
        "tests/data/test_sources.py::test_corrupt_image_ends_training_in_one_line_naming_it",
    ],
    "`data.verify=true` checks every image file before training": [
        "tests/data/test_sources.py::test_verify_refuses_then_skip_bad_leaves_them_out",
    ],
    "files without an image extension are skipped with one warning that\ncounts them": [
        "tests/data/test_sources.py::test_non_image_files_are_skipped_with_a_count",
    ],
    "A full disk says `no space left on <dir>` and keeps the\nprevious checkpoint": [
        "tests/runtime/test_files.py::test_enospc_becomes_one_line",
        "tests/runtime/test_autosave.py::test_full_disk_during_training",
    ],
    # -- from the papers we build on
    "with random cut points in the channel's [min, max], every value replaced by one drawn inside its bin": [
        "tests/data/test_randomized_quantization.py::test_matches_the_float64_reference",
        "tests/data/test_randomized_quantization.py::test_values_stay_in_each_channels_range_and_bins_bound_distinct_values",
        "tests/data/test_randomized_quantization.py::test_counter_sampler_matches_cpu_distributions",
    ],
    "cross-entropy with label smoothing 0.8 on the dataset index": [
        "tests/objectives/test_diet.py::test_value_and_gradients_match_the_float64_reference",
        "tests/objectives/test_diet.py::test_each_index_is_the_class_of_its_head_row",
    ],
    "writes `encoder.safetensors`, `reduced.safetensors`, `summary.json`": [
        "tests/reduce/test_cli.py::test_npy_in_vectors_and_encoder_out",
        "tests/reduce/test_cli.py::test_eval_cache_dir_gives_train_and_test_vectors_with_labels",
    ],
    "(fresh optimiser, schedule and step 0;": [
        "tests/train/test_init_from.py::test_loads_exactly_the_checkpoint_weights_from_a_file_or_a_run_dir",
        "tests/train/test_init_from.py::test_a_run_from_init_starts_at_step_zero_with_a_fresh_optimiser",
    ],
    "a resume continues the run's own `last.ckpt`)": [
        "tests/train/test_init_from.py::test_a_resumed_init_from_run_continues_its_own_run",
    ],
    "logged at validation (`val/alpha_req`, `val/lidar`, `label_free.*`), in `selfsup-eval`'s `metrics.json`": [
        "tests/train/test_label_free.py::test_validation_logs_alpha_req_and_lidar_of_the_checkpointed_encoder",
        "tests/evaluate/test_evaluate.py::test_run_dir_writes_metrics_matching_the_metric_functions",
    ],
    "which ranks the runs by each score (α-ReQ by closeness to α = 1)": [
        "tests/evaluate/test_evaluate.py::test_rank_correlations_and_selection",
    ],
    "logs the top eigenvalues of the projections' covariance (`train/eigval_<k>`)": [
        "tests/train/test_label_free.py::test_top_eigenvalues_of_the_projections_are_logged_descending",
    ],
    # -- SSLMem
    "It refuses splits that do not define the score (a candidate f did not train on, or g did)": [
        "tests/evaluate/test_memorization.py::test_splits_that_do_not_define_sslmem_are_refused",
    ],
    # -- SAS
    "`order=official` is what the released code computes (a ranking by row sums: its greedy's redundancy term": [
        "tests/test_subsets.py::test_both_orders_against_their_transcriptions",
    ],
    # -- shards
    "a run from shards equals the run from the folder bit for bit": [
        "tests/data/test_shards.py::test_run_from_shards_equals_run_from_the_folder_and_resumes_mid_epoch",
    ],
    "a damaged, truncated, missing or swapped shard stops the run in one line naming the shard and member": [
        # broken on purpose (the crc32 and the tar-header checks, one at a time):
        "tests/data/test_shards.py::test_verify_names_a_damaged_member_and_skip_bad_leaves_it_out",
        "tests/data/test_shards.py::test_a_shard_swapped_for_another_is_named",
        "tests/data/test_shards.py::test_truncated_missing_and_mismatched_shards_are_named_before_training",
        "tests/data/test_shards.py::test_damaged_member_stops_training_in_one_line_and_writes_no_checkpoint",
    ],
    "From an http(s) URL, shards are fetched on first read into a local cache and checked against their md5": [
        "tests/data/test_shards.py::test_shards_from_a_url_are_fetched_checked_and_cached",
    ],
}


def normalised(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


README = normalised((ROOT / "README.md").read_text())


@pytest.mark.parametrize("promise", list(PROMISES))
def test_the_readme_still_makes_the_promise(promise):
    assert normalised(promise) in README, f"README.md no longer says: {promise!r} (update tests/test_readme.py)"


@pytest.mark.parametrize("test_id", sorted({t for tests in PROMISES.values() for t in tests}))
def test_each_named_test_exists(test_id):
    path, name = test_id.split("::")
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    assert callable(getattr(module, name, None)), f"{test_id} does not exist"
