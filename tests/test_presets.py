"""Presets are rows of one table (`keras_rpat.method_presets`): what each builds, and that a new row is enough.

`EXPECTED` is what every preset built before the table existed (the configs of
the objects the old `presets.py` lambdas and `if` ladder made), written out once:
the table must build exactly these objects.
"""

import keras_rpat  # noqa: F401

import dataclasses
import importlib

import pytest
from testing import invoke

from keras_rpat import method_presets
from keras_rpat import presets
from keras_rpat import recipes
from keras_rpat.cli import train as cli_train
from keras_rpat.recipes import build
from keras_rpat.recipes import schema

# fmt: off
BENCH = {'post_step_clean_forward': False, 'pipeline': 'bench', 'two_view': False, 'epochs': 110, 'schedule': 'multistep', 'milestones': (100, 105), 'lr_factor': 1.5, 'learning_rate': 0.1, 'momentum': 0.9, 'weight_decay': 0.0005, 'arch': 'resnet18_bottleneck', 'normalize': None, 'label_smoothing': 0.0, 'nesterov': False, 'weight_decay_exclude': None, 'warmup_fraction': 0.025, 'ema_warmup_fraction': 0.025, 'awp': None}
SOTAS = {'post_step_clean_forward': True, 'pipeline': 'sotas', 'two_view': False, 'epochs': 200, 'schedule': 'piecewise', 'milestones': (100, 150), 'lr_factor': 1.5, 'learning_rate': 0.1, 'momentum': 0.9, 'weight_decay': 0.0005, 'arch': 'preact_resnet18', 'normalize': 'cifar10', 'label_smoothing': 0.0, 'nesterov': False, 'weight_decay_exclude': None, 'warmup_fraction': 0.025, 'ema_warmup_fraction': 0.025, 'awp': None}
EXPECTED = [
    ('clean', {'norm': 'linf'}, dict(BENCH, **{'name': 'clean', 'norm': 'linf', 'attack': None, 'losses': [('CrossEntropy', {'name': 'ce', 'reduction': 'sum_over_batch_size', 'start_epoch': 0, 'view': 'clean'})], 'weight_averaging': None})),
    ('clean', {'norm': 'l2'}, dict(BENCH, **{'name': 'clean', 'norm': 'l2', 'attack': None, 'losses': [('CrossEntropy', {'name': 'ce', 'reduction': 'sum_over_batch_size', 'start_epoch': 0, 'view': 'clean'})], 'weight_averaging': None})),
    ('random_noise', {'norm': 'linf'}, dict(BENCH, **{'name': 'random_noise', 'norm': 'linf', 'attack': ('RandomNoise', {'epsilon': 0.03137254901960784, 'training': False, 'schedule': None, 'seed': None}), 'losses': [('CrossEntropy', {'name': 'ce', 'reduction': 'sum_over_batch_size', 'start_epoch': 0, 'view': 'adv'})], 'weight_averaging': None})),
    ('random_noise', {'norm': 'l2'}, dict(BENCH, **{'name': 'random_noise', 'norm': 'l2', 'attack': ('RandomNoise', {'epsilon': 0.03137254901960784, 'training': False, 'schedule': None, 'seed': None}), 'losses': [('CrossEntropy', {'name': 'ce', 'reduction': 'sum_over_batch_size', 'start_epoch': 0, 'view': 'adv'})], 'weight_averaging': None})),
    ('pgd_at', {'norm': 'linf'}, dict(BENCH, **{'name': 'pgd_at', 'norm': 'linf', 'attack': ('PGD', {'norm': 'linf', 'epsilon': 0.03137254901960784, 'step_size': 0.00784313725490196, 'num_steps': 10, 'random_start': True, 'style': 'advertorch', 'loss': 'ce', 'training': False, 'schedule': None, 'seed': None}), 'losses': [('AdversarialCrossEntropy', {'name': 'adv_ce', 'reduction': 'sum_over_batch_size', 'start_epoch': 0, 'view': 'adv'})], 'weight_averaging': None})),
    ('pgd_at', {'norm': 'l2'}, dict(BENCH, **{'name': 'pgd_at', 'norm': 'l2', 'attack': ('PGD', {'norm': 'l2', 'epsilon': 0.5019607843137255, 'step_size': 0.12549019607843137, 'num_steps': 10, 'random_start': True, 'style': 'advertorch', 'loss': 'ce', 'training': False, 'schedule': None, 'seed': None}), 'losses': [('AdversarialCrossEntropy', {'name': 'adv_ce', 'reduction': 'sum_over_batch_size', 'start_epoch': 0, 'view': 'adv'})], 'weight_averaging': None})),
    ('pgd_at+rpat', {'norm': 'linf'}, dict(BENCH, **{'name': 'pgd_at+rpat', 'norm': 'linf', 'attack': ('PGD', {'norm': 'linf', 'epsilon': 0.03137254901960784, 'step_size': 0.00784313725490196, 'num_steps': 10, 'random_start': True, 'style': 'advertorch', 'loss': 'ce', 'training': False, 'schedule': None, 'seed': None}), 'losses': [('AdversarialCrossEntropy', {'name': 'adv_ce', 'reduction': 'sum_over_batch_size', 'start_epoch': 0, 'view': 'adv'}), ('RobustPerception', {'name': 'rpat', 'reduction': 'sum_over_batch_size', 'start_epoch': 0, 'alpha': 0.5, 'weight': 1.0, 'distance': 'mse', 'alpha_sampling': 'fixed', 'proxy': 'logits', 'form': 'reference'})], 'weight_averaging': None})),
    ('pgd_at+rpat', {'norm': 'l2'}, dict(BENCH, **{'name': 'pgd_at+rpat', 'norm': 'l2', 'attack': ('PGD', {'norm': 'l2', 'epsilon': 0.5019607843137255, 'step_size': 0.12549019607843137, 'num_steps': 10, 'random_start': True, 'style': 'advertorch', 'loss': 'ce', 'training': False, 'schedule': None, 'seed': None}), 'losses': [('AdversarialCrossEntropy', {'name': 'adv_ce', 'reduction': 'sum_over_batch_size', 'start_epoch': 0, 'view': 'adv'}), ('RobustPerception', {'name': 'rpat', 'reduction': 'sum_over_batch_size', 'start_epoch': 0, 'alpha': 0.5, 'weight': 1.0, 'distance': 'mse', 'alpha_sampling': 'fixed', 'proxy': 'logits', 'form': 'reference'})], 'weight_averaging': None})),
    ('trades', {'norm': 'linf'}, dict(BENCH, **{'name': 'trades', 'norm': 'linf', 'attack': ('PGD', {'norm': 'linf', 'epsilon': 0.03137254901960784, 'step_size': 0.00784313725490196, 'num_steps': 10, 'random_start': True, 'style': 'trades', 'loss': 'kl', 'training': False, 'schedule': None, 'seed': None}), 'losses': [('TRADES', {'name': 'trades', 'reduction': 'sum_over_batch_size', 'start_epoch': 0, 'beta': 6.0, 'reuse_clean_forward': False})], 'weight_averaging': None})),
    ('trades', {'norm': 'l2'}, dict(BENCH, **{'name': 'trades', 'norm': 'l2', 'attack': ('PGD', {'norm': 'l2', 'epsilon': 0.5019607843137255, 'step_size': 0.12549019607843137, 'num_steps': 10, 'random_start': True, 'style': 'trades', 'loss': 'kl', 'training': False, 'schedule': None, 'seed': None}), 'losses': [('TRADES', {'name': 'trades', 'reduction': 'sum_over_batch_size', 'start_epoch': 0, 'beta': 6.0, 'reuse_clean_forward': False})], 'weight_averaging': None})),
    ('trades+rpat', {'norm': 'linf'}, dict(BENCH, **{'name': 'trades+rpat', 'norm': 'linf', 'attack': ('PGD', {'norm': 'linf', 'epsilon': 0.03137254901960784, 'step_size': 0.00784313725490196, 'num_steps': 10, 'random_start': True, 'style': 'trades', 'loss': 'kl', 'training': False, 'schedule': None, 'seed': None}), 'losses': [('TRADES', {'name': 'trades', 'reduction': 'sum_over_batch_size', 'start_epoch': 0, 'beta': 6.0, 'reuse_clean_forward': False}), ('RobustPerception', {'name': 'rpat', 'reduction': 'sum_over_batch_size', 'start_epoch': 0, 'alpha': 0.5, 'weight': 1.0, 'distance': 'mse', 'alpha_sampling': 'fixed', 'proxy': 'logits', 'form': 'reference'})], 'weight_averaging': None})),
    ('trades+rpat', {'norm': 'l2'}, dict(BENCH, **{'name': 'trades+rpat', 'norm': 'l2', 'attack': ('PGD', {'norm': 'l2', 'epsilon': 0.5019607843137255, 'step_size': 0.12549019607843137, 'num_steps': 10, 'random_start': True, 'style': 'trades', 'loss': 'kl', 'training': False, 'schedule': None, 'seed': None}), 'losses': [('TRADES', {'name': 'trades', 'reduction': 'sum_over_batch_size', 'start_epoch': 0, 'beta': 6.0, 'reuse_clean_forward': False}), ('RobustPerception', {'name': 'rpat', 'reduction': 'sum_over_batch_size', 'start_epoch': 0, 'alpha': 0.5, 'weight': 1.0, 'distance': 'mse', 'alpha_sampling': 'fixed', 'proxy': 'logits', 'form': 'reference'})], 'weight_averaging': None})),
    ('mart', {'norm': 'linf'}, dict(BENCH, **{'name': 'mart', 'norm': 'linf', 'attack': ('PGD', {'norm': 'linf', 'epsilon': 0.03137254901960784, 'step_size': 0.00784313725490196, 'num_steps': 10, 'random_start': True, 'style': 'trades', 'loss': 'ce', 'training': False, 'schedule': None, 'seed': None}), 'losses': [('MART', {'name': 'mart', 'reduction': 'sum_over_batch_size', 'start_epoch': 0, 'beta': 6.0})], 'weight_averaging': None})),
    ('mart', {'norm': 'l2'}, dict(BENCH, **{'name': 'mart', 'norm': 'l2', 'attack': ('PGD', {'norm': 'l2', 'epsilon': 0.5019607843137255, 'step_size': 0.12549019607843137, 'num_steps': 10, 'random_start': True, 'style': 'trades', 'loss': 'ce', 'training': False, 'schedule': None, 'seed': None}), 'losses': [('MART', {'name': 'mart', 'reduction': 'sum_over_batch_size', 'start_epoch': 0, 'beta': 6.0})], 'weight_averaging': None})),
    ('mart+rpat', {'norm': 'linf'}, dict(BENCH, **{'name': 'mart+rpat', 'norm': 'linf', 'attack': ('PGD', {'norm': 'linf', 'epsilon': 0.03137254901960784, 'step_size': 0.00784313725490196, 'num_steps': 10, 'random_start': True, 'style': 'trades', 'loss': 'ce', 'training': False, 'schedule': None, 'seed': None}), 'losses': [('MART', {'name': 'mart', 'reduction': 'sum_over_batch_size', 'start_epoch': 0, 'beta': 6.0}), ('RobustPerception', {'name': 'rpat', 'reduction': 'sum_over_batch_size', 'start_epoch': 0, 'alpha': 0.5, 'weight': 1.0, 'distance': 'mse', 'alpha_sampling': 'fixed', 'proxy': 'logits', 'form': 'reference'})], 'weight_averaging': None})),
    ('mart+rpat', {'norm': 'l2'}, dict(BENCH, **{'name': 'mart+rpat', 'norm': 'l2', 'attack': ('PGD', {'norm': 'l2', 'epsilon': 0.5019607843137255, 'step_size': 0.12549019607843137, 'num_steps': 10, 'random_start': True, 'style': 'trades', 'loss': 'ce', 'training': False, 'schedule': None, 'seed': None}), 'losses': [('MART', {'name': 'mart', 'reduction': 'sum_over_batch_size', 'start_epoch': 0, 'beta': 6.0}), ('RobustPerception', {'name': 'rpat', 'reduction': 'sum_over_batch_size', 'start_epoch': 0, 'alpha': 0.5, 'weight': 1.0, 'distance': 'mse', 'alpha_sampling': 'fixed', 'proxy': 'logits', 'form': 'reference'})], 'weight_averaging': None})),
    ('consistency_at', {'norm': 'linf'}, dict(dict(BENCH, **{'two_view': True}), **{'name': 'consistency_at', 'norm': 'linf', 'attack': ('PGD', {'norm': 'linf', 'epsilon': 0.03137254901960784, 'step_size': 0.00784313725490196, 'num_steps': 10, 'random_start': True, 'style': 'advertorch', 'loss': 'ce', 'training': False, 'schedule': None, 'seed': None}), 'losses': [('AdversarialCrossEntropy', {'name': 'adv_ce', 'reduction': 'sum_over_batch_size', 'start_epoch': 0, 'view': 'adv'}), ('Consistency', {'name': 'consistency', 'reduction': 'sum_over_batch_size', 'start_epoch': 0, 'weight': 1.0, 'temperature': 0.5})], 'weight_averaging': None})),
    ('consistency_at', {'norm': 'l2'}, dict(dict(BENCH, **{'two_view': True}), **{'name': 'consistency_at', 'norm': 'l2', 'attack': ('PGD', {'norm': 'l2', 'epsilon': 0.5019607843137255, 'step_size': 0.12549019607843137, 'num_steps': 10, 'random_start': True, 'style': 'advertorch', 'loss': 'ce', 'training': False, 'schedule': None, 'seed': None}), 'losses': [('AdversarialCrossEntropy', {'name': 'adv_ce', 'reduction': 'sum_over_batch_size', 'start_epoch': 0, 'view': 'adv'}), ('Consistency', {'name': 'consistency', 'reduction': 'sum_over_batch_size', 'start_epoch': 0, 'weight': 1.0, 'temperature': 0.5})], 'weight_averaging': None})),
    ('consistency_at+rpat', {'norm': 'linf'}, dict(dict(BENCH, **{'two_view': True}), **{'name': 'consistency_at+rpat', 'norm': 'linf', 'attack': ('PGD', {'norm': 'linf', 'epsilon': 0.03137254901960784, 'step_size': 0.00784313725490196, 'num_steps': 10, 'random_start': True, 'style': 'advertorch', 'loss': 'ce', 'training': False, 'schedule': None, 'seed': None}), 'losses': [('AdversarialCrossEntropy', {'name': 'adv_ce', 'reduction': 'sum_over_batch_size', 'start_epoch': 0, 'view': 'adv'}), ('Consistency', {'name': 'consistency', 'reduction': 'sum_over_batch_size', 'start_epoch': 0, 'weight': 1.0, 'temperature': 0.5}), ('RobustPerception', {'name': 'rpat', 'reduction': 'sum_over_batch_size', 'start_epoch': 0, 'alpha': 0.5, 'weight': 1.0, 'distance': 'mse', 'alpha_sampling': 'fixed', 'proxy': 'logits', 'form': 'reference'})], 'weight_averaging': None})),
    ('consistency_at+rpat', {'norm': 'l2'}, dict(dict(BENCH, **{'two_view': True}), **{'name': 'consistency_at+rpat', 'norm': 'l2', 'attack': ('PGD', {'norm': 'l2', 'epsilon': 0.5019607843137255, 'step_size': 0.12549019607843137, 'num_steps': 10, 'random_start': True, 'style': 'advertorch', 'loss': 'ce', 'training': False, 'schedule': None, 'seed': None}), 'losses': [('AdversarialCrossEntropy', {'name': 'adv_ce', 'reduction': 'sum_over_batch_size', 'start_epoch': 0, 'view': 'adv'}), ('Consistency', {'name': 'consistency', 'reduction': 'sum_over_batch_size', 'start_epoch': 0, 'weight': 1.0, 'temperature': 0.5}), ('RobustPerception', {'name': 'rpat', 'reduction': 'sum_over_batch_size', 'start_epoch': 0, 'alpha': 0.5, 'weight': 1.0, 'distance': 'mse', 'alpha_sampling': 'fixed', 'proxy': 'logits', 'form': 'reference'})], 'weight_averaging': None})),
    ('rebat', {'norm': 'linf'}, dict(SOTAS, **{'name': 'rebat', 'norm': 'linf', 'attack': ('PGD', {'norm': 'linf', 'epsilon': 0.03137254901960784, 'step_size': 0.00784313725490196, 'num_steps': 10, 'random_start': True, 'style': 'sotas', 'loss': 'ce', 'training': True, 'schedule': None, 'seed': None}), 'losses': [('AdversarialCrossEntropy', {'name': 'adv_ce', 'reduction': 'sum_over_batch_size', 'start_epoch': 0, 'view': 'adv'}), ('BoAT', {'name': 'boat', 'reduction': 'sum_over_batch_size', 'start_epoch': 105, 'beta': 1.0})], 'weight_averaging': {'decay': 0.999, 'start_epoch': 105, 'teacher_training': False, 'evaluate_average': True}})),
    ('rebat', {'norm': 'l2'}, dict(SOTAS, **{'name': 'rebat', 'norm': 'l2', 'attack': ('PGD', {'norm': 'l2', 'epsilon': 0.5019607843137255, 'step_size': 0.12549019607843137, 'num_steps': 10, 'random_start': True, 'style': 'sotas', 'loss': 'ce', 'training': True, 'schedule': None, 'seed': None}), 'losses': [('AdversarialCrossEntropy', {'name': 'adv_ce', 'reduction': 'sum_over_batch_size', 'start_epoch': 0, 'view': 'adv'}), ('BoAT', {'name': 'boat', 'reduction': 'sum_over_batch_size', 'start_epoch': 105, 'beta': 1.0})], 'weight_averaging': {'decay': 0.999, 'start_epoch': 105, 'teacher_training': False, 'evaluate_average': True}})),
    ('rpat_plus_plus', {'norm': 'linf'}, dict(SOTAS, **{'name': 'rpat_plus_plus', 'norm': 'linf', 'attack': ('PGD', {'norm': 'linf', 'epsilon': 0.03137254901960784, 'step_size': 0.00784313725490196, 'num_steps': 10, 'random_start': True, 'style': 'sotas', 'loss': 'ce', 'training': True, 'schedule': None, 'seed': None}), 'losses': [('AdversarialCrossEntropy', {'name': 'adv_ce', 'reduction': 'sum_over_batch_size', 'start_epoch': 0, 'view': 'adv'}), ('RPATPlusPlus', {'name': 'rpat_pp', 'reduction': 'sum_over_batch_size', 'start_epoch': 105, 'beta': 1.0, 'alpha': 0.5})], 'weight_averaging': {'decay': 0.999, 'start_epoch': 105, 'teacher_training': False, 'evaluate_average': True}})),
    ('rpat_plus_plus', {'norm': 'l2'}, dict(SOTAS, **{'name': 'rpat_plus_plus', 'norm': 'l2', 'attack': ('PGD', {'norm': 'l2', 'epsilon': 0.5019607843137255, 'step_size': 0.12549019607843137, 'num_steps': 10, 'random_start': True, 'style': 'sotas', 'loss': 'ce', 'training': True, 'schedule': None, 'seed': None}), 'losses': [('AdversarialCrossEntropy', {'name': 'adv_ce', 'reduction': 'sum_over_batch_size', 'start_epoch': 0, 'view': 'adv'}), ('RPATPlusPlus', {'name': 'rpat_pp', 'reduction': 'sum_over_batch_size', 'start_epoch': 105, 'beta': 1.0, 'alpha': 0.5})], 'weight_averaging': {'decay': 0.999, 'start_epoch': 105, 'teacher_training': False, 'evaluate_average': True}})),
    ('wa', {'norm': 'linf'}, dict(SOTAS, **{'name': 'wa', 'norm': 'linf', 'attack': ('PGD', {'norm': 'linf', 'epsilon': 0.03137254901960784, 'step_size': 0.00784313725490196, 'num_steps': 10, 'random_start': True, 'style': 'sotas', 'loss': 'ce', 'training': True, 'schedule': None, 'seed': None}), 'losses': [('AdversarialCrossEntropy', {'name': 'adv_ce', 'reduction': 'sum_over_batch_size', 'start_epoch': 0, 'view': 'adv'})], 'weight_averaging': {'decay': 0.999, 'start_epoch': 105, 'teacher_training': False, 'evaluate_average': True}})),
    ('wa', {'norm': 'l2'}, dict(SOTAS, **{'name': 'wa', 'norm': 'l2', 'attack': ('PGD', {'norm': 'l2', 'epsilon': 0.5019607843137255, 'step_size': 0.12549019607843137, 'num_steps': 10, 'random_start': True, 'style': 'sotas', 'loss': 'ce', 'training': True, 'schedule': None, 'seed': None}), 'losses': [('AdversarialCrossEntropy', {'name': 'adv_ce', 'reduction': 'sum_over_batch_size', 'start_epoch': 0, 'view': 'adv'})], 'weight_averaging': {'decay': 0.999, 'start_epoch': 105, 'teacher_training': False, 'evaluate_average': True}})),
    ('pgd_at', {'l2_step_size': 0.058823529411764705, 'norm': 'l2'}, dict(BENCH, **{'name': 'pgd_at', 'norm': 'l2', 'attack': ('PGD', {'norm': 'l2', 'epsilon': 0.5019607843137255, 'step_size': 0.058823529411764705, 'num_steps': 10, 'random_start': True, 'style': 'advertorch', 'loss': 'ce', 'training': False, 'schedule': None, 'seed': None}), 'losses': [('AdversarialCrossEntropy', {'name': 'adv_ce', 'reduction': 'sum_over_batch_size', 'start_epoch': 0, 'view': 'adv'})], 'weight_averaging': None})),
    ('trades+rpat', {'l2_step_size': 0.058823529411764705, 'norm': 'l2'}, dict(BENCH, **{'name': 'trades+rpat', 'norm': 'l2', 'attack': ('PGD', {'norm': 'l2', 'epsilon': 0.5019607843137255, 'step_size': 0.058823529411764705, 'num_steps': 10, 'random_start': True, 'style': 'trades', 'loss': 'kl', 'training': False, 'schedule': None, 'seed': None}), 'losses': [('TRADES', {'name': 'trades', 'reduction': 'sum_over_batch_size', 'start_epoch': 0, 'beta': 6.0, 'reuse_clean_forward': False}), ('RobustPerception', {'name': 'rpat', 'reduction': 'sum_over_batch_size', 'start_epoch': 0, 'alpha': 0.5, 'weight': 1.0, 'distance': 'mse', 'alpha_sampling': 'fixed', 'proxy': 'logits', 'form': 'reference'})], 'weight_averaging': None})),
    ('rebat', {'l2_step_size': 0.058823529411764705, 'norm': 'l2'}, dict(SOTAS, **{'name': 'rebat', 'norm': 'l2', 'attack': ('PGD', {'norm': 'l2', 'epsilon': 0.5019607843137255, 'step_size': 0.058823529411764705, 'num_steps': 10, 'random_start': True, 'style': 'sotas', 'loss': 'ce', 'training': True, 'schedule': None, 'seed': None}), 'losses': [('AdversarialCrossEntropy', {'name': 'adv_ce', 'reduction': 'sum_over_batch_size', 'start_epoch': 0, 'view': 'adv'}), ('BoAT', {'name': 'boat', 'reduction': 'sum_over_batch_size', 'start_epoch': 105, 'beta': 1.0})], 'weight_averaging': {'decay': 0.999, 'start_epoch': 105, 'teacher_training': False, 'evaluate_average': True}})),
    ('rebat', {'stronger_attack': True}, dict(SOTAS, **{'name': 'rebat', 'norm': 'linf', 'attack': ('PGD', {'norm': 'linf', 'epsilon': 0.03137254901960784, 'step_size': 0.00784313725490196, 'num_steps': 10, 'random_start': True, 'style': 'sotas', 'loss': 'ce', 'training': True, 'schedule': {100: {'epsilon': 0.0392156862745098, 'num_steps': 12}}, 'seed': None}), 'losses': [('AdversarialCrossEntropy', {'name': 'adv_ce', 'reduction': 'sum_over_batch_size', 'start_epoch': 0, 'view': 'adv'}), ('BoAT', {'name': 'boat', 'reduction': 'sum_over_batch_size', 'start_epoch': 105, 'beta': 1.0})], 'weight_averaging': {'decay': 0.999, 'start_epoch': 105, 'teacher_training': False, 'evaluate_average': True}})),
    ('rpat_plus_plus', {'stronger_attack': True}, dict(SOTAS, **{'name': 'rpat_plus_plus', 'norm': 'linf', 'attack': ('PGD', {'norm': 'linf', 'epsilon': 0.03137254901960784, 'step_size': 0.00784313725490196, 'num_steps': 10, 'random_start': True, 'style': 'sotas', 'loss': 'ce', 'training': True, 'schedule': {100: {'epsilon': 0.0392156862745098, 'num_steps': 12}}, 'seed': None}), 'losses': [('AdversarialCrossEntropy', {'name': 'adv_ce', 'reduction': 'sum_over_batch_size', 'start_epoch': 0, 'view': 'adv'}), ('RPATPlusPlus', {'name': 'rpat_pp', 'reduction': 'sum_over_batch_size', 'start_epoch': 105, 'beta': 1.0, 'alpha': 0.5})], 'weight_averaging': {'decay': 0.999, 'start_epoch': 105, 'teacher_training': False, 'evaluate_average': True}})),
    ('rebat', {'teacher_training': True}, dict(SOTAS, **{'name': 'rebat', 'norm': 'linf', 'attack': ('PGD', {'norm': 'linf', 'epsilon': 0.03137254901960784, 'step_size': 0.00784313725490196, 'num_steps': 10, 'random_start': True, 'style': 'sotas', 'loss': 'ce', 'training': True, 'schedule': None, 'seed': None}), 'losses': [('AdversarialCrossEntropy', {'name': 'adv_ce', 'reduction': 'sum_over_batch_size', 'start_epoch': 0, 'view': 'adv'}), ('BoAT', {'name': 'boat', 'reduction': 'sum_over_batch_size', 'start_epoch': 105, 'beta': 1.0})], 'weight_averaging': {'decay': 0.999, 'start_epoch': 105, 'teacher_training': True, 'evaluate_average': True}})),
    ('rebat', {'teacher_training': 'first_epoch'}, dict(SOTAS, **{'name': 'rebat', 'norm': 'linf', 'attack': ('PGD', {'norm': 'linf', 'epsilon': 0.03137254901960784, 'step_size': 0.00784313725490196, 'num_steps': 10, 'random_start': True, 'style': 'sotas', 'loss': 'ce', 'training': True, 'schedule': None, 'seed': None}), 'losses': [('AdversarialCrossEntropy', {'name': 'adv_ce', 'reduction': 'sum_over_batch_size', 'start_epoch': 0, 'view': 'adv'}), ('BoAT', {'name': 'boat', 'reduction': 'sum_over_batch_size', 'start_epoch': 105, 'beta': 1.0})], 'weight_averaging': {'decay': 0.999, 'start_epoch': 105, 'teacher_training': 'first_epoch', 'evaluate_average': True}})),
    ('rpat_plus_plus', {'teacher_training': True}, dict(SOTAS, **{'name': 'rpat_plus_plus', 'norm': 'linf', 'attack': ('PGD', {'norm': 'linf', 'epsilon': 0.03137254901960784, 'step_size': 0.00784313725490196, 'num_steps': 10, 'random_start': True, 'style': 'sotas', 'loss': 'ce', 'training': True, 'schedule': None, 'seed': None}), 'losses': [('AdversarialCrossEntropy', {'name': 'adv_ce', 'reduction': 'sum_over_batch_size', 'start_epoch': 0, 'view': 'adv'}), ('RPATPlusPlus', {'name': 'rpat_pp', 'reduction': 'sum_over_batch_size', 'start_epoch': 105, 'beta': 1.0, 'alpha': 0.5})], 'weight_averaging': {'decay': 0.999, 'start_epoch': 105, 'teacher_training': True, 'evaluate_average': True}})),
    ('rpat_plus_plus', {'teacher_training': 'first_epoch'}, dict(SOTAS, **{'name': 'rpat_plus_plus', 'norm': 'linf', 'attack': ('PGD', {'norm': 'linf', 'epsilon': 0.03137254901960784, 'step_size': 0.00784313725490196, 'num_steps': 10, 'random_start': True, 'style': 'sotas', 'loss': 'ce', 'training': True, 'schedule': None, 'seed': None}), 'losses': [('AdversarialCrossEntropy', {'name': 'adv_ce', 'reduction': 'sum_over_batch_size', 'start_epoch': 0, 'view': 'adv'}), ('RPATPlusPlus', {'name': 'rpat_pp', 'reduction': 'sum_over_batch_size', 'start_epoch': 105, 'beta': 1.0, 'alpha': 0.5})], 'weight_averaging': {'decay': 0.999, 'start_epoch': 105, 'teacher_training': 'first_epoch', 'evaluate_average': True}})),
    ('wa', {'teacher_training': True}, dict(SOTAS, **{'name': 'wa', 'norm': 'linf', 'attack': ('PGD', {'norm': 'linf', 'epsilon': 0.03137254901960784, 'step_size': 0.00784313725490196, 'num_steps': 10, 'random_start': True, 'style': 'sotas', 'loss': 'ce', 'training': True, 'schedule': None, 'seed': None}), 'losses': [('AdversarialCrossEntropy', {'name': 'adv_ce', 'reduction': 'sum_over_batch_size', 'start_epoch': 0, 'view': 'adv'})], 'weight_averaging': {'decay': 0.999, 'start_epoch': 105, 'teacher_training': True, 'evaluate_average': True}})),
    ('wa', {'teacher_training': 'first_epoch'}, dict(SOTAS, **{'name': 'wa', 'norm': 'linf', 'attack': ('PGD', {'norm': 'linf', 'epsilon': 0.03137254901960784, 'step_size': 0.00784313725490196, 'num_steps': 10, 'random_start': True, 'style': 'sotas', 'loss': 'ce', 'training': True, 'schedule': None, 'seed': None}), 'losses': [('AdversarialCrossEntropy', {'name': 'adv_ce', 'reduction': 'sum_over_batch_size', 'start_epoch': 0, 'view': 'adv'})], 'weight_averaging': {'decay': 0.999, 'start_epoch': 105, 'teacher_training': 'first_epoch', 'evaluate_average': True}})),
]
# fmt: on


def _snapshot(preset):
    """A preset's fields, its objects as (class name, config)."""
    out = {}
    for field in dataclasses.fields(preset):
        value = getattr(preset, field.name)
        if field.name == "attack":
            value = None if value is None else (type(value).__name__, value.get_config())
        elif field.name == "losses":
            value = [(type(l).__name__, l.get_config()) for l in value]
        elif field.name == "weight_averaging":
            value = None if value is None else value.get_config()
        out[field.name] = value
    return out


def test_every_preset_has_an_expectation():
    assert sorted({name for name, _, _ in EXPECTED}) == sorted(presets.list_presets())


@pytest.mark.parametrize("name, kwargs, expected", EXPECTED, ids=[f"{n}-{k}" for n, k, _ in EXPECTED])
def test_a_preset_builds_the_objects_it_always_built(name, kwargs, expected):
    assert _snapshot(presets.get(name, **kwargs)) == expected


# A made-up method: a row unlike every real one (its own attack, loss, budgets, options and schedule).
TOY_ROW = {
    "metadata": {"label": "Toy-AT", "description": "A throwaway row of the tests.", "aliases": ("toyat",)},
    "attack": {"class_name": "PGD", "config": {"style": "trades", "loss": "kl", "training": True}},
    "attack_takes_budget": True,
    "losses": [{"class_name": "TRADES", "config": {"beta": 3.0}}],
    "rpat": True,
    "weight_averaging": {"decay": 0.99, "start_epoch": 2},
    "settings": dict(method_presets.BENCH_SETTINGS, epochs=7, milestones=(5,), arch="small_cnn"),
    "budgets": {
        "linf": {"epsilon": 4 / 255, "step_size": 1 / 255, "num_steps": 3},
        "l2": {"epsilon": 64 / 255, "step_size": 16 / 255, "num_steps": 3},
    },
    "options": {"cutmix": False, "teacher_training": "inference"},
}


@pytest.fixture
def toy_method(monkeypatch):
    """The toy row added to the table, and `keras-rpat train` made again from the table (as at start-up)."""
    monkeypatch.setitem(method_presets.method_presets, "toy", TOY_ROW)
    yield importlib.reload(cli_train)
    monkeypatch.undo()
    importlib.reload(cli_train)


def test_a_new_row_is_a_new_method(toy_method):
    # presets.get builds the row's objects.
    assert presets.list_presets()[-2:] == ["toy", "toy+rpat"]
    preset = presets.get("Toy-AT+RPAT", norm="l2", teacher_training=True)
    assert preset.name == "toy+rpat" and preset.norm == "l2"
    assert preset.attack.get_config() == {
        "norm": "l2",
        "epsilon": 64 / 255,
        "step_size": 16 / 255,
        "num_steps": 3,
        "random_start": True,
        "style": "trades",
        "loss": "kl",
        "training": True,
        "schedule": None,
        "seed": None,
    }
    assert [type(l).__name__ for l in preset.losses] == ["TRADES", "RobustPerception"]
    assert preset.losses[0].beta == 3.0 and preset.losses[1].alpha == 0.5
    assert preset.weight_averaging.get_config() == {
        "decay": 0.99,
        "start_epoch": 2,
        "teacher_training": True,
        "evaluate_average": True,
    }
    assert (preset.epochs, preset.milestones, preset.arch) == (7, (5,), "small_cnn")
    with pytest.raises(ValueError, match="applies to the presets"):
        presets.get("toy", stronger_attack=True)

    # The command line lists it, accepts it, and names it in the help of the options it takes.
    help_text = " ".join(invoke(toy_method.train_command, ["--help"]).output.split())
    assert "toy, toy+rpat" in help_text
    assert "CutMix (rebat, rpat_plus_plus, toy;" in help_text
    assert "WA teacher (rebat, rpat_plus_plus, wa, toy)" in help_text
    refused = invoke(toy_method.train_command, ["--method", "toy", "--dataset", "cifar10", "--beta", "2"])
    assert (
        refused.exit_code == 2
        and "option `beta` applies to the TRADES / MART / ReBAT / RPAT++ presets only" in refused.output
    )

    # The recipe schema validates it and its options; its runs are evaluated with its budgets.
    config = {"norms": ["linf"], "perception": None}
    (method,) = schema.validate_methods(
        "toy.toml", [{"id": "toy", "preset": "toyat+rpat", "label": "Toy", "options": {"cutmix": True}}], config
    )
    assert method.preset == "toy+rpat" and method.options == {"cutmix": True}
    with pytest.raises(recipes.RecipeError, match="applies to the TRADES / MART / ReBAT / RPAT\\+\\+ presets only"):
        schema.validate_methods(
            "toy.toml", [{"id": "t", "preset": "toy", "label": "T", "options": {"beta": 2.0}}], config
        )
    with pytest.raises(recipes.RecipeError, match="Toy-AT presets only"):
        recipes.single_run("pgd_at", "cifar10", cutmix=True)
    spec = recipes.single_run("toy+rpat", "cifar10", cutmix=False, proxy="penultimate")
    assert spec.options == {"proxy": "penultimate"} and spec.epochs == 7
    settings = build.evaluation_settings(spec, recipes.build_preset(spec))
    assert (settings["epsilon"], settings["step_size"]) == (4 / 255, 1 / 255)
    # (a run's L2 step is the run's `l2_step_size`, 32/255 unless given)
    spec = recipes.single_run("toy", "cifar10", norm="l2")
    settings = build.evaluation_settings(spec, recipes.build_preset(spec))
    assert (settings["epsilon"], settings["step_size"]) == (64 / 255, 32 / 255)
